"""Per-process singletons: the embedder and the vector store client.

Both load lazily on first use, so a Celery prefork parent never initialises CUDA or a model:
only the child process that runs a task does.
"""

from __future__ import annotations

import functools
import os

from django.conf import settings

from webapp.search.vector_store import MilvusVectorStore


@functools.cache
def get_embedder():
    import torch

    from ml.inference.embedder import Embedder

    threads = int(os.environ.get("TORCH_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    return Embedder(
        backbone=settings.EMBEDDER_BACKBONE,
        device=settings.EMBEDDER_DEVICE,
        image_size=settings.EMBEDDER_IMAGE_SIZE,
        batch_size=settings.EMBEDDER_BATCH_SIZE,
    )


@functools.cache
def _store(uri: str, token: str, alias: str, prefix: str, index_type: str, connect_timeout: float) -> MilvusVectorStore:
    return MilvusVectorStore(uri=uri, token=token, alias=alias, prefix=prefix, index_type=index_type,
                             connect_timeout=connect_timeout)


def get_vector_store() -> MilvusVectorStore:
    return _store(
        settings.MILVUS_URI,
        settings.MILVUS_TOKEN,
        settings.MILVUS_ALIAS,
        settings.MILVUS_COLLECTION_PREFIX,
        settings.MILVUS_INDEX_TYPE,
        settings.MILVUS_CONNECT_TIMEOUT,
    )
