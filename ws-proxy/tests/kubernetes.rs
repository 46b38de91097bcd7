//! The Kubernetes example is valid against the Kubernetes schemas (strict), consistent with
//! itself (every Service targets a port its pods declare; probes, resources and a locked-down
//! securityContext on every container; a grace period that covers ws-proxy's own), and its
//! ws-proxy configuration is accepted by the binary.
//!
//! The validator is `kubernetes-validate` from PyPI, installed on first use into a virtualenv
//! under `target/`. Without Python or the registry the test skips outside CI and fails in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/kubernetes/ws-proxy-sidecar.yaml"
);

/// The virtualenv's bin folder, with kubernetes-validate installed; `None` if it cannot be had.
fn validator() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s-validate");
    let bin = venv.join("bin");
    if bin.join("kubernetes-validate").exists() {
        return Some(bin);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    let installed = made
        && Command::new(bin.join("pip"))
            .args(["install", "--quiet", "kubernetes-validate==1.37.0"])
            .status()
            .is_ok_and(|s| s.success());
    installed.then_some(bin)
}

/// Checks the example's own consistency with the validator's Python (it brings PyYAML).
const CONSISTENT: &str = r#"
import sys, yaml, re
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
deployments = [d for d in docs if d["kind"] == "Deployment"]
problems = []
def seconds(text):
    m = re.fullmatch(r"(\d+)s", text.strip().strip('"'))
    return int(m.group(1)) if m else None
for svc in (d for d in docs if d["kind"] == "Service"):
    pods = [d for d in deployments
            if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                   for k, v in svc["spec"]["selector"].items())]
    if not pods:
        problems.append(f"Service {svc['metadata']['name']} selects no Deployment")
    for port in svc["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        for d in pods:
            declared = [p for c in d["spec"]["template"]["spec"]["containers"]
                        for p in c.get("ports", [])]
            if not any(target in (p.get("name"), p["containerPort"]) for p in declared):
                problems.append(f"Service {svc['metadata']['name']} targets {target!r}, "
                                f"which {d['metadata']['name']} does not declare")
config = {}
for cm in (d for d in docs if d["kind"] == "ConfigMap"):
    for line in cm["data"].get("ws-proxy.toml", "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            config[k.strip()] = v.strip()
for d in deployments:
    name = d["metadata"]["name"]
    pod = d["spec"]["template"]["spec"]
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append(f"{name}: pod does not run as non-root")
    for c in pod["containers"]:
        where = f"{name}/{c['name']}"
        for key in ("readinessProbe", "livenessProbe", "resources"):
            if key not in c:
                problems.append(f"{where}: no {key}")
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: securityContext not locked down")
        if c["name"] == "ws-proxy":
            args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in c.get("args", []) if "=" in a}
            delay = seconds(args.get("--shutdown-delay", config.get("shutdown_delay", "0s")))
            grace = seconds(args.get("--shutdown-grace", config.get("shutdown_grace", "10s")))
            if delay is None or grace is None or pod["terminationGracePeriodSeconds"] <= delay + grace:
                problems.append(f"{where}: terminationGracePeriodSeconds does not cover "
                                f"shutdown delay + grace ({delay} + {grace})")
# An app the sidecar reaches on loopback listens on loopback: no Service can reach that port.
loopback = {int(p) for p in re.findall(r"ws://127\.0\.0\.1:(\d+)", open(sys.argv[1]).read())}
for svc in (d for d in docs if d["kind"] == "Service"):
    for port in svc["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        for d in deployments:
            for c in d["spec"]["template"]["spec"]["containers"]:
                for p in c.get("ports", []):
                    if target in (p.get("name"), p["containerPort"]) and p["containerPort"] in loopback:
                        problems.append(f"Service {svc['metadata']['name']} targets port "
                                        f"{p['containerPort']}, which the app binds on loopback only")
print("\n".join(problems))
sys.exit(1 if problems else 0)
"#;

#[test]
fn the_kubernetes_example_is_valid_and_consistent() {
    let Some(bin) = validator() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to install kubernetes-validate from PyPI"
        );
        println!("SKIPPED: kubernetes-validate could not be installed (python3 -m venv, pip)");
        return;
    };
    succeeds(Command::new(bin.join("kubernetes-validate")).args(["--strict", "--quiet", EXAMPLE]));
    succeeds(Command::new(bin.join("python")).args(["-c", CONSISTENT, EXAMPLE]));
}

/// The ConfigMap's ws-proxy.toml and the gateway's flags are what the binary accepts.
#[test]
fn the_kubernetes_examples_ws_proxy_settings_are_accepted() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let toml: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("ws-proxy.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    assert!(toml.contains("upstream = "), "{toml}");
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s-ws-proxy.toml");
    std::fs::write(&file, toml).unwrap();
    let bin = env!("CARGO_BIN_EXE_ws-proxy");
    succeeds(
        Command::new(bin)
            .arg("--config")
            .arg(&file)
            .arg("--check-config"),
    );

    let gateway: Vec<String> = text
        .lines()
        .skip_while(|l| !l.contains("name: ws-gateway"))
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- --"))
        .map(|a| format!("--{a}"))
        .collect();
    assert!(gateway.len() >= 5, "{gateway:?}");
    succeeds(Command::new(bin).args(&gateway).arg("--check-config"));
}

/// Runs `cmd`, failing the test with its output unless it succeeds.
fn succeeds(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
