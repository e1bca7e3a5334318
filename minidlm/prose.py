"""English prose that ships with Python, for training on real text without a download.

    python -m minidlm.prose pydoc runs/pydoc.txt         # the language reference (pydoc_data.topics)
    python -m minidlm.prose stdlib runs/stdlib-docs.txt  # docstrings of the standard library

Both are about 0.47 MB of English mixed with code. `pydoc` is the text the training recipe was
developed against; `stdlib` (every importable public stdlib module's docstring and those of its
own classes and functions, 200 characters or longer) is a second text it was not tuned on. The
stdlib text depends a little on the Python version and on which optional modules import.
"""
import importlib
import inspect
import sys
import warnings

# modules with side effects on import (a browser, a poem on stdout) or a GUI
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data"}


def pydoc_text() -> str:
    import pydoc_data.topics as topics
    return "\n\n".join(topics.topics.values())


def stdlib_text(min_chars: int = 200) -> str:
    texts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name in SKIP or name.startswith("_"):
                continue
            try:
                module = importlib.import_module(name)
            except Exception:  # platform-specific or optional modules
                continue
            own = [obj for key, obj in sorted(vars(module).items())
                   if not key.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
                   and getattr(obj, "__module__", None) == name]
            docs = [inspect.getdoc(module)] + [inspect.getdoc(obj) for obj in own]
            texts += [d for d in docs if d and len(d) >= min_chars]
    return "\n\n".join(texts)


def main():
    from .cli import ArgumentParser, run_main
    from .files import preflight, write_text
    p = ArgumentParser(description="Write English prose that ships with Python to a text file.")
    p.add_argument("source", choices=["pydoc", "stdlib"])
    p.add_argument("out", help="the text file to write")

    def run():
        args = p.parse_args()
        preflight(outputs=[args.out])
        text = pydoc_text() if args.source == "pydoc" else stdlib_text()
        write_text(args.out, lambda f: f.write(text))
        print(f"wrote {len(text.encode()):,} bytes to {args.out}", file=sys.stderr)
    run_main(run)


if __name__ == "__main__":
    main()
