"""Where transformers looks for a text model it is given by hub name, and what to say when it is not there.

A hub name (``roberta-large``) is fetched into the Hugging Face cache the first time and read from
there afterwards; offline (``HF_HUB_OFFLINE=1``) or without network, a model that is not cached cannot
be built. The message then names the missing parts, the cache folder it looked in, and the two ways
out: fetch once with network, or give a local folder holding the files instead of the name.
"""

from __future__ import annotations

from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

# what transformers reads of a hub model: each part, and the sets of files that can hold it
HUB_PARTS = {"configuration": (("config.json",),),
             "tokenizer": (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",)),
             "weights": (("model.safetensors",), ("pytorch_model.bin",))}


def cached(name: str, filename: str) -> bool:
    """Whether the Hugging Face cache holds ``filename`` of the hub model ``name`` (never a download)."""
    try:
        return isinstance(try_to_load_from_cache(name, filename), str)
    except ValueError:  # not a valid hub name: nothing of it can be cached
        return False


def first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def needed_parts(pretrained: bool) -> list[str]:
    return [part for part in HUB_PARTS if pretrained or part != "weights"]


def needed_files(parts) -> str:
    """The parts with their files, e.g. 'configuration (config.json) and tokenizer (tokenizer.json, or ...)'."""
    def files(part):
        return ", or ".join(" and ".join(group) for group in HUB_PARTS[part])
    return " and ".join(f"{part} ({files(part)})" for part in parts)


def not_in_cache(name: str, pretrained: bool, err: Exception) -> str:
    """Why a hub model could not be loaded, for a user who may be offline: what is missing, where it was
    looked for, and how to give a local folder instead."""
    cache = hub_constants.HF_HUB_CACHE  # read now: HF_HOME / HF_HUB_CACHE may have changed since import
    missing = [part for part in needed_parts(pretrained)
               if not any(all(cached(name, f) for f in group) for group in HUB_PARTS[part])]
    offline = " (offline: HF_HUB_OFFLINE is set)" if hub_constants.HF_HUB_OFFLINE else ""
    where = (f"Missing from the Hugging Face cache {cache}: its {needed_files(missing)}" if missing else
             f"Its files in the Hugging Face cache {cache} could not be read")
    return (f"text encoder {name!r} could not be loaded{offline}. {where} [{first_line(err)}]. Either run once with "
            f"network, which fills that cache (HF_HOME or HF_HUB_CACHE choose its place), or copy its "
            f"{needed_files(needed_parts(pretrained))} into a local folder and give that folder instead of the name: "
            "-p text_encoder FOLDER for the runner, Stage1Config(text_encoder=FOLDER) in Python, --text-encoder "
            "FOLDER for the released checkpoint in python -m salsa_lib.search")
