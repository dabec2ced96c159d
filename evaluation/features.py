"""From a model and a loader to features: the L2-normalised image (and caption) embeddings of every drawing with
its metadata and the id of its caption's token sequence, equal for identical captions (:func:`extract_features`), the zero-shot classifier of the class names (:func:`zero_shot_classifier`),
and string metadata (patent ids) as integer ids (:func:`index_strings`)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier

from patentclip.plugins.data import batch as B
from patentclip.plugins.image_transport import transport_of


@torch.no_grad()
def extract_features(model, dataloader, device, input_dtype=torch.float32, max_batches: Optional[int] = None,
                     with_text: bool = True) -> Dict:
    """Run the model over an evaluation loader; L2-normalised features (on the CPU) and the metadata of every
    drawing. ``with_text=False`` encodes the images only (a retrieval database, linear-probe training data). The
    images are finished on ``device`` by the loader's image transport."""
    model.eval()
    transport = transport_of(dataloader)
    out: Dict[str, List] = {"image_features": [], "text_features": [], "text_tokens": [], "class_id": [],
                            "grant_day": [], "patent_id": [], "view": [], "key": []}
    for i, batch in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
        images = transport.images(batch, B.IMAGE, device, input_dtype)
        if with_text:
            feats = model(images, batch[B.TEXT].to(device=device))
            out["text_features"].append(F.normalize(feats["text_features"].float(), dim=-1).cpu())
            out["text_tokens"].append(batch[B.TEXT].cpu())
        else:
            feats = {"image_features": model.encode_image(images, normalize=True)}  # as forward() does
        out["image_features"].append(F.normalize(feats["image_features"].float(), dim=-1).cpu())
        out["class_id"].append(batch[B.CLASS_ID].cpu())
        out["grant_day"].append(batch[B.GRANT_DAY].cpu())
        for k, name in (("patent_id", B.PATENT_ID), ("view", B.VIEW), ("key", B.KEY)):
            out[k].extend(batch[name])
    if not out["image_features"]:
        raise ValueError("the evaluation data yielded no samples")
    for k in ("image_features", "class_id", "grant_day"):
        out[k] = torch.cat(out[k])
    out["text_features"] = torch.cat(out["text_features"]) if with_text else None
    # identical captions (the same token sequence) get one id: they are one text for image-text retrieval
    out["text_id"] = torch.unique(torch.cat(out["text_tokens"]), dim=0, return_inverse=True)[1] if with_text else None
    del out["text_tokens"]
    return out


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, class_names: Sequence[str], templates: Sequence[str], device,
                         input_dtype=torch.float32) -> torch.Tensor:
    return build_zero_shot_classifier(model, tokenizer=tokenizer, classnames=list(class_names),
                                      templates=list(templates), num_classes_per_batch=10, device=device,
                                      use_tqdm=False).float().cpu()


def index_strings(*lists: Sequence[str]) -> List[torch.Tensor]:
    """Each list of strings as a LongTensor of ids, equal strings (across all the lists) getting equal ids."""
    ids: Dict[str, int] = {}
    out = []
    for lst in lists:
        out.append(torch.tensor([ids.setdefault(s, len(ids)) for s in lst], dtype=torch.long))
    return out
