"""AWS KMS as a wrapping key: `Encrypt` / `Decrypt` of the 32-byte data key, bound to the
recovery point by an encryption context.

The context is {aegis:namespace, aegis:policy, aegis:recoveryPoint} of the manifest: KMS
refuses to decrypt a wrap under any other context, so a wrapped key copied into another
point's manifest opens nothing, and CloudTrail shows which point each Decrypt was for. The
context is computed from the manifest's own fields (not from the cluster), so a brand-new
cluster restoring into another namespace opens the same wraps.

botocore directly, as for S3 (agent/s3.py): the agent does not load boto3.
"""

from __future__ import annotations

import re
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aegis.agent.config import KmsKeyConfig, aws_credentials

KMS_WRAP = "AWS-KMS"
_ARN_REGION = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):")


class KmsError(Exception):
    """A KMS call failed; the message names the key and the likely fix, never key material."""


def encryption_context(namespace: str, policy: str, recovery_point: str) -> dict[str, str]:
    return {
        "aegis:namespace": namespace,
        "aegis:policy": policy,
        "aegis:recoveryPoint": recovery_point,
    }


def region_of(key_id: str, configured: str | None, env: dict[str, str]) -> str:
    """The key's region: configured, else the ARN's, else the environment's, else us-east-1."""
    if configured:
        return configured
    match = _ARN_REGION.match(key_id)
    if match:
        return match.group(1)
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def client(key: KmsKeyConfig, env: dict[str, str], region: str | None = None) -> Any:
    endpoint = key.endpoint or env.get("AEGIS_KMS_ENDPOINT") or env.get("AWS_ENDPOINT_URL_KMS")
    creds = aws_credentials(env, key.credentials_env_prefix)
    config = Config(
        retries={"mode": "standard", "max_attempts": 6}, connect_timeout=10, read_timeout=30
    )
    return botocore.session.get_session().create_client(
        "kms",
        endpoint_url=endpoint or None,
        region_name=region or region_of(key.key_id, key.region, env),
        config=config,
        aws_access_key_id=creds.get("aws_access_key_id"),
        aws_secret_access_key=creds.get("aws_secret_access_key"),
        aws_session_token=creds.get("aws_session_token"),
    )


def _explain(error: BaseException, key_id: str, action: str) -> KmsError:
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        message = str(err.get("Message", "")).strip()
        hint = {
            "InvalidCiphertextException": (
                "the wrapped key does not belong to this point (different encryption context) "
                "or to this KMS key"
            ),
            "AccessDeniedException": f"grant kms:{action} on the key to these credentials",
            "NotFoundException": "the key or alias does not exist in that region",
            "DisabledException": "the key is disabled: enable it",
            "KMSInvalidStateException": "the key is pending deletion or unavailable",
            "IncorrectKeyException": "the wrap was made with another KMS key",
        }.get(code, "")
        detail = f"{code}: {message}" if message else code
        suffix = f"; {hint}" if hint else ""
        return KmsError(f"KMS {action} with {key_id} failed ({detail}){suffix}")
    if isinstance(error, BotoCoreError):
        return KmsError(f"KMS {action} with {key_id} failed: {error}")
    return KmsError(f"KMS {action} with {key_id} failed: {type(error).__name__}: {error}")


def wrap(
    key: KmsKeyConfig, env: dict[str, str], data_key: bytes, context: dict[str, str]
) -> tuple[str, str, bytes]:
    """Encrypt the data key: (key ARN KMS reports, region, ciphertext blob)."""
    region = region_of(key.key_id, key.region, env)
    try:
        answer = client(key, env, region).encrypt(
            KeyId=key.key_id, Plaintext=data_key, EncryptionContext=context
        )
    except (ClientError, BotoCoreError) as error:
        raise _explain(error, key.key_id, "Encrypt") from None
    return str(answer["KeyId"]), region, bytes(answer["CiphertextBlob"])


def unwrap(
    key: KmsKeyConfig,
    env: dict[str, str],
    wrapped: bytes,
    context: dict[str, str],
    region: str | None,
) -> bytes:
    """Decrypt a wrap; KeyId is passed so a blob of another key is refused (IncorrectKey)."""
    try:
        answer = client(key, env, region).decrypt(
            CiphertextBlob=wrapped, EncryptionContext=context, KeyId=key.key_id
        )
    except (ClientError, BotoCoreError) as error:
        raise _explain(error, key.key_id, "Decrypt") from None
    return bytes(answer["Plaintext"])
