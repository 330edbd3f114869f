"""More than one way to open a backup: the data key wrapped once per wrapping key.

A backup's data key is wrapped for the newest key of the policy's key Secret (AES-KW) and
for each AWS KMS key of the policy; every wrap is stored in the manifest
(`encryption.wraps`), and any one of them opens the payload. So losing the cluster (and
its Secret) loses nothing while a KMS key, or an exported copy of the Secret, survives.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from aegis.agent import kms
from aegis.agent.config import KmsKeyConfig
from aegis.agent.crypto import (
    KEY_BYTES,
    KEY_WRAP,
    NONCE_PREFIX_BYTES,
    DataKey,
    Keyring,
    KeyringError,
)
from aegis.agent.errors import AgentError
from aegis.agent.log import log
from aegis.agent.manifest import EncryptionRecord, KeyWrap, Manifest
from aegis.agent.scrub import SCRUBBER

KeyringLoader = Callable[[], Keyring]


def context_of(manifest: Manifest) -> dict[str, str]:
    return kms.encryption_context(manifest.namespace, manifest.policy, manifest.recovery_point)


def _optional_keyring(loader: KeyringLoader) -> tuple[Keyring | None, str | None]:
    try:
        return loader(), None
    except KeyringError as error:
        return None, str(error)


def new_wrapped_data_key(
    keyring_loader: KeyringLoader,
    key_secret: bool | None,
    kms_keys: list[KmsKeyConfig],
    env: dict[str, str],
    context: dict[str, str],
) -> tuple[DataKey, list[KeyWrap]]:
    """A fresh data key and its wraps: the keyring's newest key first (when used), then each
    KMS key in order. Every wrap must succeed: a backup missing a configured wrap would
    silently lose the escrow the user asked for."""
    data_key = secrets.token_bytes(KEY_BYTES)
    SCRUBBER.add(data_key)
    wraps: list[KeyWrap] = []
    if key_secret is not False:
        keyring, why = _optional_keyring(keyring_loader)
        if keyring is None:
            if key_secret or not kms_keys:
                raise KeyringError(why or "no keyring")
        else:
            key_id = keyring.newest_id
            wrapped = aes_key_wrap(keyring.get(key_id), data_key)
            wraps.append(_wrap(KEY_WRAP, key_id, wrapped))
    for kms_key in kms_keys:
        try:
            arn, region, blob = kms.wrap(kms_key, env, data_key, context)
        except kms.KmsError as error:
            raise AgentError(str(error), kind="KmsFailed") from None
        wraps.append(_wrap(kms.KMS_WRAP, arn, blob, region, context))
    if not wraps:
        raise AgentError(
            "no wrapping key: give the policy a key Secret or a KMS key", kind="KeyNotFound"
        )
    first = wraps[0]
    key = DataKey(data_key, first.key_id, first.wrapped_key_bytes(), os.urandom(NONCE_PREFIX_BYTES))
    return key, wraps


def _wrap(
    how: str,
    key_id: str,
    wrapped: bytes,
    region: str | None = None,
    context: dict[str, str] | None = None,
) -> KeyWrap:
    return KeyWrap(
        key_wrap=how,
        key_id=key_id,
        wrapped_key=base64.b64encode(wrapped).decode(),
        region=region,
        encryption_context=context,
    )


def with_wraps(record: EncryptionRecord, wraps: list[KeyWrap]) -> EncryptionRecord:
    """The record with every wrap listed; the top-level fields stay the first wrap's."""
    first = wraps[0]
    return record.model_copy(
        update={
            "key_id": first.key_id,
            "key_wrap": first.key_wrap,
            "wrapped_key": first.wrapped_key,
            "wraps": wraps,
        }
    )


def _kms_key_for(wrap: KeyWrap, kms_keys: list[KmsKeyConfig]) -> KmsKeyConfig:
    """The configured KMS key matching the wrap (for its endpoint and credentials), else the
    wrap's own key ARN with ambient credentials: a new cluster needs only KMS access."""
    for key in kms_keys:
        if key.key_id == wrap.key_id:
            return key
    # An alias or bare key id in the config cannot be matched to the ARN without a KMS call;
    # one configured key with an endpoint/credentials is taken as the way to reach KMS.
    template = kms_keys[0] if len(kms_keys) == 1 else None
    return KmsKeyConfig(
        key_id=wrap.key_id,
        region=wrap.region,
        endpoint=template.endpoint if template else None,
        credentials_env_prefix=template.credentials_env_prefix if template else "",
    )


def open_data_key(
    manifest: Manifest,
    keyring_loader: KeyringLoader,
    kms_keys: list[KmsKeyConfig],
    env: dict[str, str],
) -> tuple[bytes, KeyWrap]:
    """The data key from the first wrap that opens: Secret keys first (no network), then
    KMS. Raises AgentError listing why each wrap failed."""
    wraps = manifest.encryption.all_wraps()
    failures: list[str] = []
    wrong = False
    keyring: Keyring | None = None
    keyring_error: str | None = None
    secret_wraps = [w for w in wraps if w.key_wrap == KEY_WRAP]
    if secret_wraps:
        keyring, keyring_error = _optional_keyring(keyring_loader)
    for wrap in secret_wraps:
        if keyring is None:
            failures.append(f"Secret key {wrap.key_id!r}: {keyring_error}")
            continue
        if wrap.key_id not in keyring.keys:
            have = ", ".join(sorted(keyring.keys)) or "none"
            failures.append(
                f"Secret key {wrap.key_id!r} is not in {keyring.origin} (key ids present: {have})"
            )
            continue
        try:
            data_key = aes_key_unwrap(keyring.get(wrap.key_id), wrap.wrapped_key_bytes())
        except InvalidUnwrap:
            wrong = True
            failures.append(
                f"wrong key: key {wrap.key_id!r} in {keyring.origin} does not unwrap this "
                "backup's data key (the key under that id was changed)"
            )
            continue
        SCRUBBER.add(data_key)
        return data_key, wrap
    context = context_of(manifest)
    for wrap in wraps:
        if wrap.key_wrap != kms.KMS_WRAP:
            if wrap.key_wrap != KEY_WRAP:
                failures.append(f"wrap {wrap.key_wrap!r} is unknown to this agent")
            continue
        try:
            data_key = kms.unwrap(
                _kms_key_for(wrap, kms_keys), env, wrap.wrapped_key_bytes(), context, wrap.region
            )
        except kms.KmsError as error:
            failures.append(str(error))
            continue
        if len(data_key) != KEY_BYTES:
            failures.append(f"KMS key {wrap.key_id} returned {len(data_key)} bytes, not 32")
            continue
        SCRUBBER.add(data_key)
        log(f"data key opened with KMS key {wrap.key_id}")
        return data_key, wrap
    reason = "no wrapping key opens this backup: " + "; ".join(failures)
    if not failures:
        reason = "the manifest lists no wrapped data key"
    kind = "WrongKey" if wrong and len(failures) == 1 else "KeyNotFound"
    raise AgentError(reason, kind=kind)


def add_kms_wrap(
    manifest: Manifest, data_key: bytes, key: KmsKeyConfig, env: dict[str, str]
) -> tuple[Manifest, bool]:
    """The manifest with a wrap for `key` added (False when one for that key exists)."""
    context = context_of(manifest)
    try:
        arn, region, blob = kms.wrap(key, env, data_key, context)
    except kms.KmsError as error:
        raise AgentError(str(error), kind="KmsFailed") from None
    wraps = manifest.encryption.all_wraps()
    if any(w.key_wrap == kms.KMS_WRAP and w.key_id == arn for w in wraps):
        return manifest, False
    wraps.append(_wrap(kms.KMS_WRAP, arn, blob, region, context))
    encryption = manifest.encryption.model_copy(update={"wraps": wraps})
    return manifest.model_copy(update={"encryption": encryption}), True
