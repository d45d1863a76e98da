from __future__ import annotations

from cnnvis_cli.errors import first_line, for_terminal


def test_the_first_line_of_a_message_without_terminal_colours() -> None:
    assert first_line("\n\x1b[1m\x1b[31mWeightsUnpickler error:\x1b[0m Unsupported global\nmore") == (
        "WeightsUnpickler error: Unsupported global")


def test_control_characters_of_a_name_do_not_reach_the_terminal_raw() -> None:
    assert for_terminal("a\x1b[2Jb\nc\u009bd é☕") == "a\\x1b[2Jb\\x0ac\\x9bd é☕"
