"""Search a folder of sounds by description with a trained checkpoint.

    python -m salsa_lib.search --model results/tiny/stage1/member0/checkpoints/best.ckpt \\
        --audio-dir my_sounds/ "a dog barks" [--top-k 10] [--all-windows] [--json] [--rebuild]
    python -m salsa_lib.search --model data/checkpoints/passt_roberta.ckpt --audio-dir my_sounds/ "a dog barks"

``--model`` takes a checkpoint of this project or the authors' released ``passt_roberta.ckpt``, told
apart by content. The released model needs roberta-large's configuration and tokenizer: fetched once
into the Hugging Face cache, or read from a local folder given with ``--text-encoder``.

Every decodable sound below the folder is searched, whatever its name; each result is a file and
the span of its best matching window (``--all-windows``: the best windows, several per file). Files
that cannot be decoded are listed with the reason, other files counted. The window embeddings are
cached in <audio-dir>/.salsa_index/ (see salsa_lib.search.retrieval), so later searches embed only new or
changed files. Errors go to stderr with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from salsa_lib.errors import ConfigError, SalsaError
from salsa_lib.search import retrieval


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m salsa_lib.search",
                                     description="Rank the audio files of a folder by how well they match a text.")
    parser.add_argument("query", help='what to look for, e.g. "rain on a tin roof"')
    parser.add_argument("--model", required=True,
                        help="a best.ckpt of stage 1 or 2, or the authors' released passt_roberta.ckpt")
    parser.add_argument("--audio-dir", required=True, help="folder searched recursively (any decodable audio)")
    parser.add_argument("--top-k", type=int, default=5, help="results to show (default 5)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("--rebuild", action="store_true", help="ignore the embedding cache, embed every file")
    parser.add_argument("--backend", choices=retrieval.BACKENDS, default="auto",
                        help=f"exact search or FAISS (auto: FAISS from {retrieval.FAISS_THRESHOLD} windows)")
    parser.add_argument("--all-windows", action="store_true",
                        help="rank windows, not files: a long recording may match at several moments")
    parser.add_argument("--hop-seconds", type=float, default=None,
                        help="seconds between window starts (default: half the model's window)")
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    parser.add_argument("--text-encoder", default="", metavar="FOLDER",
                        help="released checkpoint only: a local folder with roberta-large's config and tokenizer "
                             "(default: the Hugging Face cache, filled on first use)")
    parser.add_argument("--trust-released-pickle", action="store_true",
                        help="released checkpoint only: unpickle it fully (a file from a source you trust)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
        retrieval.check_query(args.query)  # an empty query or a missing folder fails before the model loads
        if not Path(args.audio_dir).is_dir():
            raise ConfigError(f"audio folder {args.audio_dir} does not exist or is not a folder")
        model, _, model_id = retrieval.load_search_model(args.model, args.device, text_encoder=args.text_encoder,
                                                         trust_pickle=args.trust_released_pickle)
        index = retrieval.build_index(args.audio_dir, model, model_id, hop_seconds=args.hop_seconds,
                                      rebuild=args.rebuild, backend=args.backend,
                                      progress=not args.json and sys.stderr.isatty())
        response = retrieval.search(index, model, model_id, args.query, top_k=args.top_k,
                                    per_file=not args.all_windows)
    except SalsaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if index.skipped:
        names = "\n".join(f"  {path}: {reason}" for path, reason in index.skipped)
        print(f"skipped {len(index.skipped)} file(s) that could not be decoded:\n{names}", file=sys.stderr)
    notes = index.notes + response.notes
    if args.json:
        print(json.dumps({"query": args.query, "model_id": model_id, "audio_dir": str(index.root),
                          "backend": index.resolve_backend(), "files": len(index), "windows": index.windows,
                          "policy": index.policy,
                          "results": [{"rank": r.rank, "score": round(r.score, 6), "path": r.path,
                                       "start": round(r.start, 3), "end": round(r.end, 3), "span": r.span}
                                      for r in response],
                          "skipped": [{"path": p, "reason": why} for p, why in index.skipped],
                          "non_audio": index.non_audio, "notes": notes}, indent=2, ensure_ascii=False))
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    width = max(len(r.span) for r in response)
    print(f"{'rank':>4}  {'score':>6}  {'span':<{width}}  path")
    for r in response:
        print(f"{r.rank:>4}  {r.score:6.3f}  {r.span:<{width}}  {r.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
