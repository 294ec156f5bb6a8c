"""The embedded default broker (kombu's filesystem transport), made safe for a reader that races a writer.

kombu writes a message file in place under its final name; a worker polling the folder can take the file before
its bytes are written and die on the half-written JSON ("Unrecoverable error: JSONDecodeError"), which the
reliability soak hit on a loaded machine. Here each message is written under a name no reader looks for and then
renamed into place: a rename within one folder is atomic, so a reader sees a whole message or none.
"""

from __future__ import annotations

import contextlib
import os
import uuid

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        final_name = f"{int(round(filesystem.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final_path = os.path.join(self.data_folder_out, final_name)
        partial_path = os.path.join(self.data_folder_out, f".writing-{uuid.uuid4()}")
        try:
            with open(partial_path, "wb") as partial:
                partial.write(str_to_bytes(dumps(payload)))
            os.replace(partial_path, final_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial_path)
            raise ChannelError(f"Cannot add file {final_path!r} to directory: {exc}") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def use_atomic_filesystem_transport() -> None:
    """`filesystem://` URLs get this transport (kombu resolves the scheme through its alias table)."""
    TRANSPORT_ALIASES["filesystem"] = "webapp.broker:Transport"
