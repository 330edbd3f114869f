"""Secret scrubbing: every secret value the agent loads is registered here, and every message
leaving the process (logs, the final JSON, error reasons) passes through `scrub`."""

from __future__ import annotations

import base64
import threading
from urllib.parse import quote

MASK = "***"
# Shorter values are not masked: a one-letter "secret" would turn every such letter of every
# message into *** (corrupting the JSON result) while hiding nothing an observer could not
# guess. Such values are too short to be secrets anyway.
MIN_SECRET_LENGTH = 3


class Scrubber:
    """Replaces every registered secret value (and its common encodings) with `***`."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str | bytes | None) -> None:
        if not secret:
            return
        forms: set[str] = set()
        if isinstance(secret, bytes):
            forms.add(secret.hex())
            forms.add(secret.hex().upper())
            forms.add(base64.b64encode(secret).decode())
            forms.add(base64.urlsafe_b64encode(secret).decode())
            try:
                forms.add(secret.decode())
            except UnicodeDecodeError:
                pass
        else:
            forms.add(secret)
            forms.add(quote(secret, safe=""))
            stripped = secret.strip()
            if stripped:
                forms.add(stripped)
        with self._lock:
            self._secrets.update(f for f in forms if len(f) >= MIN_SECRET_LENGTH)

    def scrub(self, text: str) -> str:
        with self._lock:
            # Longest first, so a secret containing another is masked whole.
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __len__(self) -> int:
        return len(self._secrets)


SCRUBBER = Scrubber()
"""The process-wide scrubber."""


def scrub(text: str) -> str:
    return SCRUBBER.scrub(text)
