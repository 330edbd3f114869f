from __future__ import annotations

from aegis.agent.scrub import Scrubber


def test_every_registered_form_is_masked() -> None:
    s = Scrubber()
    s.add("p@ss word")
    s.add(b"\x00\x01binary-key-material\xff")
    s.add(None)
    s.add("")
    text = "auth p@ss word or p%40ss%20word; key 0001 " + b"\x00\x01binary-key-material\xff".hex()
    out = s.scrub(text)
    assert "p@ss word" not in out and "p%40ss%20word" not in out
    assert "binary-key-material" not in out and "62696e617279" not in out
    assert out.count("***") == 3


def test_longest_secret_first() -> None:
    s = Scrubber()
    s.add("abc")
    s.add("abcdef")
    assert s.scrub("x abcdef y abc") == "x *** y ***"


def test_values_too_short_to_be_secrets_do_not_corrupt_messages() -> None:
    scrubber = Scrubber()
    scrubber.add("t")
    scrubber.add("ab")
    scrubber.add("hunter2")
    result = '{"ok": true, "status": "restored", "by": "ab"}'
    assert scrubber.scrub(result) == result
    assert scrubber.scrub("password hunter2 rejected") == "password *** rejected"
