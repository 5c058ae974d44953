"""Per-driver results (issue 9): one driver's refusal leaves the other targets pushed and names itself."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import pytest

from accel.oci import Manifest
from accel.reference import Reference
from accel.registry import HostConfig, NotFound, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing
from tests.harness import nydus as nh

pytestmark = [pytest.mark.registry, pytest.mark.prefect, pytest.mark.nydus, nh.needs_builder]


def _layer_with_a_duplicate_entry() -> imagegen.RawLayer:
    """Valid for tar readers (the last entry wins), but zstd:chunked readers reject duplicate names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for data in (b"first\n", b"second\n"):
            info = tarfile.TarInfo("greeting.txt")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tf.addfile(info, io.BytesIO(data))
    return imagegen.RawLayer(buf.getvalue())


def test_one_refusing_driver_leaves_the_others_pushed(prefect_api, registry, tmp_path):
    from flows.convert_image import ConversionFailed, convert_image

    store = ContentStore(tmp_path / "source")
    image = imagegen.generate_image(
        [*imagegen.standard_layers(16 << 10), _layer_with_a_duplicate_entry()], store
    )
    source = Reference.parse(f"{registry.host}/per-driver/{uuid.uuid4().hex[:8]}:v1")
    with RegistryClient({registry.host: HostConfig()}) as client:
        digest = pushing.push(client, store, source, image)
        drivers = [configs.driver("estargz"), configs.driver("zstdchunked"), configs.driver("nydus")]
        config = configs.write_config(tmp_path / "config.yaml", {registry.host: {}}, drivers)

        state = convert_image(source=str(source), config=str(config), return_state=True)

        assert state.is_failed()
        assert "zstdchunked" in state.message and "appears twice" in state.message
        assert "pushed: estargz, nydus" in state.message
        failure = state.result(raise_on_failure=False)
        assert isinstance(failure, ConversionFailed) and str(failure) == state.message
        result = failure.result
        assert [t.driver for t in result.targets] == ["estargz", "nydus"]
        [failed] = result.failed
        assert failed.driver == "zstdchunked" and "appears twice" in failed.reason
        # The layer it failed at is named, though its conversion ran in a batch with the others.
        assert image.layers[-1].digest.removeprefix("sha256:")[:12] in failed.reason
        for target in result.targets:  # pushed, and made from this source
            _, raw = client.fetch_manifest(Reference.parse(target.reference))
            assert Manifest.parse(raw).subject.digest == digest
            assert json.loads(raw)["layers"]
        with pytest.raises(NotFound):
            client.resolve(Reference.parse(failed.reference))
