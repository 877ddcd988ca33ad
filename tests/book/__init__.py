"""The book's tooling: build it with mdBook, keep it true, generate its benchmark page.

- `mdbook.py`: find or install mdBook, build `docs/` into `build/book/`, serve it (`./x.py docs`).
- `check.py`: every repository path, code symbol, link and include the book and README name exists
  (`./x.py test` step `docs-check`).
- `traces.py`: the `log=trace` excerpts in `docs/traces/`, captured from a real boot and checked for
  drift (`./x.py docs --capture-traces`; `./x.py test` scenario `docs-trace-excerpts`).
- `bench_page.py`: `docs/benchmarks.md` from `build/bench/results.json` (`./x.py bench`).

Python standard library only, like x.py.
"""
