"""The embedded filesystem broker never shows a reader a half-written message."""

from __future__ import annotations

import os

import pytest
from kombu import Connection

from webapp import broker
from webapp.celery import app


@pytest.fixture
def folder_connection(tmp_path):
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path), "store_processed": False}
    with Connection("filesystem://", transport_options=options) as connection:
        yield connection, tmp_path


def test_filesystem_urls_use_the_atomic_transport(settings):
    assert isinstance(Connection("filesystem://").transport, broker.Transport)
    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        with app.connection_for_write() as connection:
            assert isinstance(connection.transport, broker.Transport)


def test_a_message_appears_under_its_queue_name_only_once_it_is_whole(folder_connection, monkeypatch):
    connection, folder = folder_connection
    seen_before_rename = []
    real_replace = os.replace

    def watching_replace(source, target):
        seen_before_rename.append(sorted(name for name in os.listdir(folder) if name.endswith(".msg")))
        assert os.path.getsize(source) > 0
        real_replace(source, target)

    monkeypatch.setattr(broker.os, "replace", watching_replace)
    queue = connection.SimpleQueue("atomic-test")
    queue.put({"image_ids": list(range(500))})
    assert seen_before_rename == [[]], "a reader could have taken the message file while it was being written"
    assert not [name for name in os.listdir(folder) if name.startswith(".writing-")]
    message = queue.get(timeout=1)
    assert message.payload == {"image_ids": list(range(500))}
    message.ack()
    queue.close()
