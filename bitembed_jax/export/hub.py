"""Push an export folder to the Hugging Face hub.

The token comes from HF_TOKEN or the user's ``hf auth login``: huggingface_hub's ``HfApi`` finds it
itself; this code only asks whether there is one, and never prints or writes it. ``client`` replaces
``HfApi()`` (tests).
"""
import re

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"--push-to-hub {repo_id!r}: expected ORG/NAME (letters, digits, '.', '_', '-')")


def check_hub_access() -> None:
    """Fail before anything is packed when huggingface_hub could not push: offline mode, or no token (whose value
    is never shown)."""
    import huggingface_hub

    if huggingface_hub.is_offline_mode():
        raise ValueError("--push-to-hub needs the Hugging Face Hub, but HF_HUB_OFFLINE is set")
    if huggingface_hub.get_token() is None:
        raise ValueError("--push-to-hub: no Hugging Face token (set HF_TOKEN or run `hf auth login`)")


def push_to_hub(folder: str, repo_id: str, *, private: bool = False, client=None, log=print) -> str:
    """create_repo (exist_ok) + upload_folder; returns the repo id."""
    check_repo_id(repo_id)
    if client is None:
        from huggingface_hub import HfApi

        check_hub_access()
        client = HfApi()
    client.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    client.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                         commit_message="Upload BitNet text embedder exported by bitembed-jax")
    log(f"pushed {folder} to https://huggingface.co/{repo_id}")
    return repo_id
