"""Retrieval: the MODEL argument, embedding, index folders and the commands that write
them, search, retrieval metrics, clustering, near-duplicates and contact sheets.
Imports nothing heavy.
"""
