"""Run both fakes until Ctrl-C: python -m tests.fakes --openai-port 8001 --ollama-port 11435."""

from __future__ import annotations

import argparse

from tests.fakes.common import add_common_args, block_until_interrupted
from tests.fakes.ollama_server import add_ollama_args, ollama_banner, ollama_from_args
from tests.fakes.openai_server import add_openai_args, openai_banner, openai_from_args


def main(argv: list[str] | None = None) -> None:
    """Start the OpenAI and Ollama fakes and print the environment to use them."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes",
        description="Fake OpenAI + Ollama servers. Pick a fault-* model to trigger a fault, or "
        'POST {"fault": "429"} to /_fake/config on either server.',
    )
    add_openai_args(parser, "--openai-port")
    add_ollama_args(parser, "--ollama-port")
    add_common_args(parser)
    args = parser.parse_args(argv)
    openai_fake = openai_from_args(args, args.openai_port).start()
    ollama_fake = ollama_from_args(args, args.ollama_port).start()
    lines = [*openai_banner(openai_fake), *ollama_banner(ollama_fake), "Ctrl-C to stop."]
    print("\n".join(lines), flush=True)
    block_until_interrupted([openai_fake, ollama_fake])


if __name__ == "__main__":
    main()
