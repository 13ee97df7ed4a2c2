"""The real node's configuration, checked without starting anything (no root, no network)."""

from __future__ import annotations

import json
import tarfile

import tomllib
import yaml

from kubetrain_dev.devcluster import build, images, real_node


def render_all(tmp_path):
    values = dict(containerd_root=tmp_path / "root", state_dir=tmp_path, socket=tmp_path / "c.sock",
                  sandbox_image=images.PAUSE_IMAGE, bridge=real_node.BRIDGE, pod_cidr=real_node.POD_CIDR,
                  node_ip=real_node.NODE_IP, service_cidr="10.96.0.0/12", kubelet_port=real_node.KUBELET_PORT,
                  healthz_port=1, ca_file=tmp_path / "ca.crt", cluster_dns=real_node.CLUSTER_DNS,
                  kubeconfig=tmp_path / "k", node_name=real_node.NODE_NAME, metrics_port=2,
                  image=images.COREDNS_IMAGE)
    return {name: real_node._render(name, **values) for name in
            ("containerd.toml", "cni.conflist", "kubelet.yaml", "kube-proxy.yaml", "coredns.yaml")}


def test_the_settings_this_machine_needs(tmp_path):
    files = render_all(tmp_path)
    cri = tomllib.loads(files["containerd.toml"])["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True  # root lacks CAP_SYS_RESOURCE
    assert cri["sandbox_image"] == images.PAUSE_IMAGE
    kubelet = yaml.safe_load(files["kubelet.yaml"])
    assert kubelet["failCgroupV1"] is False and kubelet["cgroupDriver"] == "cgroupfs"
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["authorization"]["mode"] == "Webhook" and kubelet["readOnlyPort"] == 0
    assert kubelet["address"] == real_node.NODE_IP
    proxy = yaml.safe_load(files["kube-proxy.yaml"])
    assert proxy["mode"] == "iptables" and proxy["nodePortAddresses"] == [f"{real_node.NODE_IP}/32"]


def test_pods_get_no_default_route_and_dns_forwards_nowhere(tmp_path):
    files = render_all(tmp_path)
    bridge = json.loads(files["cni.conflist"])["plugins"][0]
    assert bridge["ipMasq"] is False and not bridge.get("isDefaultGateway")
    assert bridge["ipam"]["routes"] == [{"dst": "10.96.0.0/12"}]
    corefile = next(d for d in yaml.safe_load_all(files["coredns.yaml"]) if d["kind"] == "ConfigMap")["data"]["Corefile"]
    assert not [line for line in corefile.splitlines() if line.split()[:1] == ["forward"]]
    assert "forward" not in build.COREDNS_PLUGINS and "plugin/forward" not in build.coredns_main()
    assert "kubernetes" in build.COREDNS_PLUGINS


def test_control_plane_settings_for_the_node():
    settings = real_node.cluster_settings()
    assert settings.node_ip == real_node.NODE_IP and settings.node_bridge == real_node.BRIDGE


def test_dockerfile_inputs_are_its_copy_sources():
    trainer = {str(p.relative_to(images.REPO)) for p in images.APP_IMAGES["trainer"].inputs()}
    assert {"trainer-image/Dockerfile", "trainer-image/kubetrain_trainer", "operator/kubetrain/contract"} <= trainer
    operator = {str(p.relative_to(images.REPO)) for p in images.APP_IMAGES["operator"].inputs()}
    assert {"operator/Dockerfile", "pyproject.toml", "operator/kubetrain"} <= operator


def test_docker_archive_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETRAIN_CACHE", str(tmp_path / "cache"))
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    archive = images.binary_image(images.PAUSE_IMAGE, binary)
    with tarfile.open(archive) as tar:
        [manifest] = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(manifest["Config"]))
        with tarfile.open(fileobj=tar.extractfile(manifest["Layers"][0])) as layer:
            assert "./pause" in layer.getnames()
    assert manifest["RepoTags"] == [images.PAUSE_IMAGE] and config["config"]["Entrypoint"] == ["/pause"]
    assert images.image_of(archive) == images.PAUSE_IMAGE
    # Unchanged inputs: the archive is not written again.
    mtime = archive.stat().st_mtime_ns
    assert images.binary_image(images.PAUSE_IMAGE, binary).stat().st_mtime_ns == mtime
