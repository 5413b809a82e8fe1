"""What the model-text renderer costs a streamed answer (core/ui/render.py).

The streaming pane redraws at most every 50 ms, each time through the renderer. A
4,000-token answer (about 16,000 characters of Markdown: headings, paragraphs with code and
links, lists, fenced code, tables) is fed to it the way a stream grows, 40 characters (about
10 tokens) a frame, and three paths are timed per call in CPU time of this process:

* live: `LiveMarkdown`, as the pane uses it: only the text from the last top-level block on
  is parsed again;
* live, with labels: the same answer where each section also defines a reference link that
  an earlier line uses, so every new definition makes it parse the whole text again (the
  worst case, rare in real answers);
* whole: the whole text parsed at each frame (`safe_markdown` without its cache), what a
  renderer without the streaming cache would cost; its last frame is also the cost of
  drawing one finished 4,000-token answer from the saved conversation the first time.

    .venv/bin/python -m bench.render [--tokens 4000] [--rounds 3]

It is a benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

from core.ui import render

SECTION = """## Step {i}

Here is a paragraph with **bold**, `x < y`, a [link](https://example.com/{i}) and an
image ![chart {i}](https://example.com/{i}.png) to neutralise, plus words to fill the line.

- first item with `code` and more text
- second item{ref}
  - nested item

```python
def step_{i}(values: list[int]) -> int:
    return sum(v for v in values if v < {i})
```

| a | b |
|---|---|
| {i} | $x^{i}$ |
{defn}
"""


def answer(chars: int, labels: bool) -> str:
    parts, i = [], 0
    while sum(map(len, parts)) < chars:
        parts.append(SECTION.format(i=i, ref=f" [see][r{i}]" if labels else "",
                                    defn=f"\n[r{i}]: https://example.org/{i}\n" if labels
                                    else ""))
        i += 1
    return "".join(parts)[:chars]


def frames(text: str, step: int) -> list[str]:
    return [text[:n] for n in range(step, len(text), step)] + [text]


def time_live(text: str, step: int) -> list[float]:
    live = render.LiveMarkdown("image")
    spent = []
    for frame in frames(text, step):
        began = time.process_time()
        live(frame)
        spent.append(time.process_time() - began)
    return spent


def time_whole(text: str, step: int, every: int) -> list[float]:
    spent = []
    for frame in frames(text, step)[::every]:
        began = time.process_time()
        render._safe(render.normalize(frame), {}, "image")
        spent.append(time.process_time() - began)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    chars, step = args.tokens * 4, 40
    plain, labelled = answer(chars, False), answer(chars, True)
    print(f"answer: {len(plain):,} characters, {len(frames(plain, step))} frames of {step}")
    rows = []
    for name, run in (("live", lambda: time_live(plain, step)),
                      ("live, with labels", lambda: time_live(labelled, step)),
                      ("whole (every 10th frame)", lambda: time_whole(plain, step, 10))):
        means, worst, last = [], [], []
        for _ in range(args.rounds):
            spent = run()
            means.append(statistics.mean(spent))
            worst.append(max(spent))
            last.append(spent[-1])
        rows.append((name, statistics.median(means), statistics.median(worst),
                     statistics.median(last)))
    print(f"{'path':26} {'mean us/call':>13} {'worst us':>10} {'last frame us':>14}")
    for name, mean, worst_, last_ in rows:
        print(f"{name:26} {mean * 1e6:13,.0f} {worst_ * 1e6:10,.0f} {last_ * 1e6:14,.0f}")
    live_mean, whole_mean = rows[0][1], rows[2][1]
    print(f"whole / live per call: {whole_mean / live_mean:.0f}x; a 50 ms frame spends "
          f"{live_mean / 0.05:.1%} of a core on the live renderer")


if __name__ == "__main__":
    main()
