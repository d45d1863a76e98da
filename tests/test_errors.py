from __future__ import annotations

from cnnvis_cli.errors import first_line


def test_the_first_line_of_a_message_without_terminal_colours() -> None:
    assert first_line("\n\x1b[1m\x1b[31mWeightsUnpickler error:\x1b[0m Unsupported global\nmore") == (
        "WeightsUnpickler error: Unsupported global")
