"""Reading checkpoint files without running code from them.

A ``.pt`` file is a pickle: loaded with ``torch.load(weights_only=False)`` it can call any function it names, so a
planted checkpoint runs its code under ``patentclip-train --resume``, ``patentclip-eval`` and
``patentclip-export``. patentclip reads every file with PyTorch's weights-only unpickler, which builds tensors,
containers and numbers and nothing else, plus exactly the types the files patentclip and DeepSpeed write need
(:func:`safe_globals`, found by loading DeepSpeed 0.19's state files of ZeRO stages 0, 1 and 2 in fp32 and
bf16 with nothing allowed and adding what each refusal named):

* ``deepspeed.runtime.fp16.loss_scaler.LossScaler``, ``deepspeed.runtime.zero.config.ZeroStageEnum``,
  ``deepspeed.utils.tensor_fragment.fragment_address``: in DeepSpeed's ZeRO optimizer state files;
* ``numpy.ndarray``, ``numpy.dtype``, ``numpy.dtypes.UInt32DType`` and ``numpy._core.multiarray._reconstruct``:
  the numpy RNG state (a uint32 array) each checkpoint keeps for an exact resume.

None of them runs code when it is rebuilt (plain attribute objects, an enum, a namedtuple, numpy arrays).
DeepSpeed itself calls ``torch.load(weights_only=False)``; :func:`weights_only_loads` wraps its loading
(``engine.load_checkpoint``, ``zero_to_fp32``) so those calls are weights-only too (PyTorch's
``TORCH_FORCE_WEIGHTS_ONLY_LOAD``). A file that needs anything else is refused with :class:`UntrustedCheckpoint`,
naming the file and what it asked for; ``--trust-checkpoint`` loads it the old way, for a file the user trusts.
The starting weights of ``patentclip-train`` (``--pretrained``, ``--pretrained-text``, read by open_clip;
``--pretrained-image-source``, read by timm) go through the same rule; timm reads its weight files weights-only
whatever it is asked, so for a timm backbone file the refusal says that ``--trust-checkpoint`` does not apply.
"""
from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
from typing import Iterator, List

import numpy as np
import torch

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
TRUST_FLAG = "--trust-checkpoint"
TRUST_HELP = ("Load checkpoint files with full pickle (weights_only=False). Only for files you trust: a planted "
              "checkpoint can run code. By default files are read weights-only, with exactly the types DeepSpeed's "
              "state files need allowed (patentclip.launch.safe_load), and anything else is refused.")


@functools.lru_cache(maxsize=1)
def safe_globals() -> List:
    """Exactly what patentclip's and DeepSpeed's checkpoint files need beyond PyTorch's weights-only defaults.
    (Imported when first needed, not with this module: DeepSpeed picks its accelerator when it is imported, which
    ``launch/train.py`` does only after choosing it.)"""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    reconstruct = np._core.multiarray._reconstruct  # numpy 2; files written under numpy 1 name numpy.core
    return [LossScaler, ZeroStageEnum, fragment_address, reconstruct,
            (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, type(np.dtype("uint32"))]


class UntrustedCheckpoint(RuntimeError):
    """A checkpoint file that a weights-only load refuses (it would need code or types not on the allowlist)."""


def _refusal(path: str, exc: BaseException, trust_helps: bool = True) -> UntrustedCheckpoint:
    m = re.search(r"GLOBAL ([\w.]+)", str(exc)) or re.search(r"but got <class '([\w.]+)'>", str(exc))
    if m:
        what = (f"it asks for {m.group(1)}, which a weights-only load does not run (a checkpoint file can execute "
                f"code when loaded with full pickle)")
    else:  # not a type: an opcode the weights-only unpickler lacks, or bytes that are no pickle (a damaged file)
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(exc), re.S)
        what = (f"the weights-only unpickler stopped at {reason.group(1).strip() if reason else str(exc)[:200]!r}: "
                f"the file is damaged, is not a checkpoint, or holds a pickle that a weights-only load does not run")
    if trust_helps:
        then = f"If you trust this file, pass {TRUST_FLAG} to load it anyway."
    else:
        then = (f"timm reads backbone weight files weights-only whatever the flags ({TRUST_FLAG} does not apply): "
                f"if you trust this file, save its backbone's state dict (tensors only) and pass that file.")
    return UntrustedCheckpoint(
        f"{path}: refused: {what}. patentclip's and DeepSpeed's own files need nothing beyond the allowed types. "
        + then)


def _unpickling_error(exc: BaseException):
    """The weights-only refusal behind ``exc``: itself, or the cause a reader wrapped it in (timm raises a
    RuntimeError from it); None for any other error."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, pickle.UnpicklingError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def load(f, where: str, trust: bool = False, **kw):
    """``torch.load`` of a path or file object, weights-only with :func:`safe_globals` unless ``trust``."""
    if trust:
        return torch.load(f, weights_only=False, **kw)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(f, weights_only=True, **kw)
    except pickle.UnpicklingError as exc:
        raise _refusal(where, exc) from None


@contextlib.contextmanager
def weights_only_loads(where: str, trust: bool = False, trust_helps: bool = True) -> Iterator[None]:
    """Make every ``torch.load`` inside (DeepSpeed's, open_clip's and timm's included) weights-only with
    :func:`safe_globals`; a refusal becomes :class:`UntrustedCheckpoint` naming ``where``. With ``trust`` nothing
    changes, unless ``trust_helps`` is False: the reader inside loads weights-only whatever patentclip asks (timm's
    pretrained-weights loader), so the refusal says that the trust flag does not apply."""
    if trust and trust_helps:
        yield
        return
    before = os.environ.get(FORCE_ENV)
    os.environ[FORCE_ENV] = "1"
    try:
        with torch.serialization.safe_globals(safe_globals()):
            yield
    except Exception as exc:
        refused = _unpickling_error(exc)
        if refused is None:
            raise
        raise _refusal(where, refused, trust_helps) from None
    finally:
        if before is None:
            os.environ.pop(FORCE_ENV, None)
        else:
            os.environ[FORCE_ENV] = before
