"""A nova fake virt driver whose snapshot() really uploads data to Glance.

The stock ``nova.virt.fake.FakeDriver.snapshot`` uploads nothing, so the snapshot image stays
``queued`` forever.  Here the snapshot's content is the bytes of the image the server was booted
from (when it is small enough to hold in memory), else a short deterministic marker.
"""

from __future__ import annotations

import io

from nova import exception
from nova.compute import task_states
from nova.image import glance
from nova.virt import fake
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

MAX_COPY_BYTES = 64 * 1024 * 1024


class SnapshotUploadingFakeDriver(fake.FakeDriver):
    def snapshot(self, context, instance, image_id, update_task_state):
        if instance.uuid not in self.instances:  # as FakeDriver.snapshot
            raise exception.InstanceNotRunning(instance_id=instance.uuid)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        image_api = glance.API()
        data = self._base_image_bytes(context, image_api, instance)
        if data is None:
            data = f"tutela-aio fake snapshot of instance {instance.uuid}\n".encode()
        update_task_state(
            task_state=task_states.IMAGE_UPLOADING, expected_state=task_states.IMAGE_PENDING_UPLOAD
        )
        meta = {"disk_format": "raw", "container_format": "bare"}
        image_api.update(context, image_id, meta, data=io.BytesIO(data), purge_props=False)
        LOG.info(
            "fake snapshot of %s uploaded %d bytes to image %s", instance.uuid, len(data), image_id
        )

    @staticmethod
    def _base_image_bytes(context, image_api, instance):
        image_ref = instance.image_ref
        if not image_ref:
            return None
        try:
            meta = image_api.get(context, image_ref)
            if (meta.get("size") or 0) > MAX_COPY_BYTES:
                return None
            buf = io.BytesIO()  # (without data=, nova closes the stream before returning it)
            image_api.download(context, image_ref, data=buf)
            return buf.getvalue()
        except Exception:  # the image may be gone; the marker is good enough then
            LOG.warning("could not copy base image %s into the snapshot", image_ref, exc_info=True)
            return None
