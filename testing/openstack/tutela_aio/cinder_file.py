"""A Cinder volume driver that keeps each volume in a sparse file (for tests only).

No block-device stack is usable on the test machines (no device-mapper, so no LVM; no iSCSI, NFS
or configfs), so volumes are plain files ``<file_volumes_dir>/volume-<id>`` and snapshots
``snapshot-<id>``.  Connections are of type ``local`` with ``device_path`` set to that file, so
os-brick's LOCAL connector opens the file directly; that is what backup and restore (and Nova's
fake driver, which only records attachments) need.

Loaded with ``volume_driver = tutela_aio.cinder_file.FileVolumeDriver`` and this directory on
PYTHONPATH.  Based on cinder's own ``cinder.tests.fake_driver.FakeLoggingVolumeDriver``, which
shipping Cinder packages include.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

from cinder.tests import fake_driver
from cinder.volume import configuration
from oslo_config import cfg
from oslo_log import log as logging

LOG = logging.getLogger(__name__)
GiB = 1024**3

file_opts = [
    cfg.StrOpt(
        "file_volumes_dir",
        default="/var/lib/cinder/tutela-file-volumes",
        help="Directory holding the volume and snapshot files.",
    ),
]
cfg.CONF.register_opts(file_opts, group=configuration.SHARED_CONF_GROUP)


class FileVolumeDriver(fake_driver.FakeLoggingVolumeDriver):
    VERSION = "1.0.0"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(file_opts)
        self.backend_name = self.configuration.safe_get("volume_backend_name") or "file"
        self.protocol = "local"
        self._dir = self.configuration.file_volumes_dir

    # --- paths -------------------------------------------------------------------------------
    def _volume_path(self, volume) -> str:
        return os.path.join(self._dir, f"volume-{volume['id']}")

    def _snapshot_path(self, snapshot) -> str:
        return os.path.join(self._dir, f"snapshot-{snapshot['id']}")

    def local_path(self, volume, vg=None):
        return self._volume_path(volume)

    @staticmethod
    def _copy(src: str, dst: str, size_gb: int | None = None) -> None:
        subprocess.run(["cp", "--sparse=always", src, dst], check=True)
        if size_gb is not None and os.path.getsize(dst) < size_gb * GiB:
            os.truncate(dst, size_gb * GiB)

    @staticmethod
    def _remove(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # --- setup and stats ---------------------------------------------------------------------
    def do_setup(self, context):
        os.makedirs(self._dir, exist_ok=True)

    def check_for_setup_error(self):
        if not os.path.isdir(self._dir):
            raise RuntimeError(f"file_volumes_dir {self._dir} is missing")

    def _update_volume_stats(self):
        super()._update_volume_stats()
        stat = shutil.disk_usage(self._dir)
        pool = self._stats["pools"][0]
        pool.update(
            total_capacity_gb=stat.total // GiB,
            free_capacity_gb=stat.free // GiB,
            reserved_percentage=0,
            thin_provisioning_support=True,
            thick_provisioning_support=False,
            max_over_subscription_ratio=20.0,
            replication_enabled=False,
            group_replication_enabled=False,
            multiattach=False,
        )
        self._stats["storage_protocol"] = "local"

    # --- volumes and snapshots ---------------------------------------------------------------
    def create_volume(self, volume):
        with open(self._volume_path(volume), "wb") as f:
            f.truncate(volume["size"] * GiB)
        return {"provider_location": self._volume_path(volume)}

    def delete_volume(self, volume):
        self._remove(self._volume_path(volume))

    def extend_volume(self, volume, new_size):
        os.truncate(self._volume_path(volume), new_size * GiB)

    def create_snapshot(self, snapshot):
        self._copy(self._volume_path(snapshot.volume), self._snapshot_path(snapshot))
        return {"provider_location": self._snapshot_path(snapshot)}

    def delete_snapshot(self, snapshot):
        self._remove(self._snapshot_path(snapshot))

    def revert_to_snapshot(self, context, volume, snapshot):
        self._copy(self._snapshot_path(snapshot), self._volume_path(volume), volume["size"])

    def create_volume_from_snapshot(self, volume, snapshot):
        self._copy(self._snapshot_path(snapshot), self._volume_path(volume), volume["size"])
        return {"provider_location": self._volume_path(volume)}

    def create_cloned_volume(self, volume, src_vref):
        self._copy(self._volume_path(src_vref), self._volume_path(volume), volume["size"])
        return {"provider_location": self._volume_path(volume)}

    # --- connections (os-brick LOCAL connector) ----------------------------------------------
    def initialize_connection(self, volume, connector):
        info = super().initialize_connection(volume, connector)
        access_mode = info.get("data", {}).get("access_mode", "rw")
        return {
            "driver_volume_type": "local",
            "data": {"device_path": self._volume_path(volume), "access_mode": access_mode},
        }

    def initialize_connection_snapshot(self, snapshot, connector):
        return {
            "driver_volume_type": "local",
            "data": {"device_path": self._snapshot_path(snapshot), "access_mode": "ro"},
        }
