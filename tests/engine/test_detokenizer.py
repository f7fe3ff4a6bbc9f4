from kolosal.engine.detokenizer import Detokenizer


def test_multibyte_character_is_never_split() -> None:
    detok = Detokenizer()
    data = "a🦩b".encode()
    out = [detok.feed(data[i:i + 1]).text for i in range(len(data))]
    assert out == ["a", "", "", "", "🦩", "b"]


def test_stop_string_across_pieces_is_cut_and_never_leaked() -> None:
    detok = Detokenizer(stop=("STOP",))
    outputs = [detok.feed(p) for p in [b"hello S", b"T", b"OP and more"]]
    assert [o.text for o in outputs] == ["hello ", "", ""]
    assert outputs[-1].stopped


def test_held_text_released_when_the_stop_does_not_complete() -> None:
    detok = Detokenizer(stop=("STOP",))
    assert detok.feed(b"ST").text == ""
    assert detok.feed(b"ART").text == "START"
    assert detok.feed(b" ST").text == " "
    assert detok.flush() == "ST"


def test_earliest_of_several_stops_wins() -> None:
    detok = Detokenizer(stop=("world", "lo w"))
    output = detok.feed(b"hello world")
    assert output.stopped and output.text == "hel"


def test_invalid_utf8_becomes_replacement_character() -> None:
    detok = Detokenizer()
    assert detok.feed(b"\xff").text == "\ufffd"
