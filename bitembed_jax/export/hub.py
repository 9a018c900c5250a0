"""Push an export folder to the Hugging Face hub.

The token comes from HF_TOKEN or the user's ``hf auth login``; huggingface_hub reads it itself, so this
code never holds, prints or writes it.
"""


def push_to_hub(folder: str, repo_id: str, *, private: bool = False, client=None, log=print) -> str:
    if "/" not in repo_id:
        raise ValueError(f"--push-to-hub {repo_id!r}: expected ORG/NAME")
    if client is None:
        from huggingface_hub import HfApi

        client = HfApi()
    client.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    client.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                         commit_message="Upload BitNet text embedder exported by bitembed-jax")
    log(f"pushed {folder} to https://huggingface.co/{repo_id}")
    return repo_id
