//! A real permessage-deflate peer for the tests: Python's `websockets` (driven by
//! `ws_tool.py`), installed on first use with pip into `target/tmp/python-websockets`, as the
//! Autobahn suite is. Without a Python 3 with pip these tests fail; outside CI,
//! `PYTHON_WS_SKIP=1` skips them, saying so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::io::AsyncBufReadExt;

/// The `websockets` the tests were written against.
const WEBSOCKETS: &str = "websockets==17.4";
const TOOL: &str = include_str!("ws_tool.py");

#[derive(Clone)]
pub struct Python {
    python: PathBuf,
    site: PathBuf,
    tool: PathBuf,
}

/// Python with `websockets`, or `None` (after saying why) where it cannot be had and
/// `PYTHON_WS_SKIP=1` says that is known; in CI, or without it, a missing requirement fails
/// the test.
pub async fn python() -> Option<Python> {
    static PYTHON: tokio::sync::OnceCell<Result<Python, String>> =
        tokio::sync::OnceCell::const_new();
    match PYTHON.get_or_init(install).await {
        Ok(p) => Some(p.clone()),
        Err(why)
            if std::env::var_os("CI").is_none()
                && std::env::var_os("PYTHON_WS_SKIP").is_some_and(|v| v == "1") =>
        {
            println!("SKIPPED (PYTHON_WS_SKIP=1): {why}");
            None
        }
        Err(why) => panic!("{why} (PYTHON_WS_SKIP=1 skips these tests outside CI)"),
    }
}

async fn install() -> Result<Python, String> {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-websockets");
    let python = PathBuf::from(std::env::var_os("PYTHON3").unwrap_or("python3".into()));
    let tool = home.join("ws_tool.py");
    let done = home.join("installed");
    let python = Python {
        python,
        site: home.join("site"),
        tool,
    };
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    // Written each run: the script is part of the tests, and may change with them.
    std::fs::write(&python.tool, TOOL).map_err(|e| e.to_string())?;
    if std::fs::read_to_string(&done).ok().as_deref() == Some(WEBSOCKETS) {
        return Ok(python);
    }
    println!(
        "installing {WEBSOCKETS} into {} (first run only)",
        home.display()
    );
    let out = tokio::process::Command::new(&python.python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(["--upgrade", "--target"])
        .arg(&python.site)
        .arg(WEBSOCKETS)
        .output()
        .await
        .map_err(|e| format!("cannot run pip with {}: {e}", python.python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "pip could not install {WEBSOCKETS} with {}:\n{}",
            python.python.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(&done, WEBSOCKETS).map_err(|e| e.to_string())?;
    Ok(python)
}

impl Python {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.python);
        cmd.arg(&self.tool)
            .args(args)
            .env("PYTHONPATH", &self.site)
            .kill_on_drop(true);
        cmd
    }

    /// An echo server (`websockets`, compressing with its defaults when `deflate`): the
    /// process (killed on drop) and its address.
    pub async fn echo_upstream(&self, deflate: bool) -> (tokio::process::Child, SocketAddr) {
        let mode = if deflate { "deflate" } else { "plain" };
        let mut child = self
            .command(&["echo", mode])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the Python echo server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let port = super::within("the Python echo server's port", lines.next_line())
            .await
            .unwrap()
            .expect("the Python echo server exited");
        (
            child,
            SocketAddr::from(([127, 0, 0, 1], port.trim().parse().unwrap())),
        )
    }

    /// Runs the tool with `args` and returns the JSON it prints.
    pub async fn run(&self, args: &[&str]) -> serde_json::Value {
        let out = super::within("the Python client", self.command(args).output())
            .await
            .expect("run the Python client");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|_| {
            panic!(
                "the Python client printed {text:?} ({})",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}
