//! A real `ternd` for the bench programs: built in release, started on folders under a
//! directory, stopped with SIGTERM (shared by the bench programs; each uses a part).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The operator token of the bench daemons.
pub const TOKEN: &str = "bench-operator-token-0123456789";

/// A running `ternd`; stopped (SIGTERM, then kill after 30 s) when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    /// `http://<addr>`.
    pub url: String,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait: an error if it does not exit cleanly within 60 s.
    pub fn stop(mut self) -> Result<(), BoxError> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return if s.success() {
                    Ok(())
                } else {
                    Err(format!("ternd exited {s}").into())
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("ternd did not stop".into())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/release/<name>`, built by cargo (a no-op when fresh).
pub fn release_binary(name: &str) -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or("bench executable lives in target/<profile>/deps")?
        .to_path_buf();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            name,
            "--bin",
            name,
            "--target-dir",
        ])
        .arg(&target)
        .status()?;
    if !status.success() {
        return Err(format!("building {name} failed").into());
    }
    Ok(target.join("release").join(name))
}

/// Starts `ternd` as deployment d1 on folders under `dir`: its volume at
/// `file://<dir>/volume<volume_query>`, `api` (TOML lines) in its `[api]` table, its log
/// in `<dir>/ternd-<tag>.log`; returns once it is ready.
pub fn start_daemon(
    dir: &Path,
    ternd: &Path,
    volume_query: &str,
    api: &str,
    tag: &str,
) -> Result<Daemon, BoxError> {
    std::fs::create_dir_all(dir)?;
    let h = dir.display();
    let cfg = dir.join("d1.toml");
    std::fs::write(
        &cfg,
        format!(
            "deployment_id = \"d1\"\nlisten = \"127.0.0.1:0\"\nmetadata_path = \"{h}/meta.db\"\noperator_token = \"{TOKEN}\"\n[volume]\nurl = \"file://{h}/volume{volume_query}\"\n[replication]\nurl = \"file://{h}/replication\"\n[keys]\nkind = \"local\"\ndir = \"{h}/keys\"\n[api]\n{api}[log]\nlevel = \"warn\"\n"
        ),
    )?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(ternd)
        .arg("--config")
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("ternd-{tag}.log")))?)
        .spawn()?;
    let mut d = Daemon {
        child,
        url: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(a) = std::fs::read_to_string(&ready)
            && !a.is_empty()
        {
            d.url = format!("http://{a}");
            return Ok(d);
        }
        if let Some(s) = d.child.try_wait()? {
            return Err(format!("ternd exited: {s}").into());
        }
        if Instant::now() > deadline {
            return Err("ternd did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs `body` (of `content_type`) with the operator token; the JSON answer, or an error
/// naming the URL, status and answer.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    content_type: &str,
) -> Result<serde_json::Value, BoxError> {
    let r = http
        .post(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
    if !status.is_success() {
        return Err(format!("{url}: {status} {v}").into());
    }
    Ok(v)
}

/// [`post`] of a JSON body.
pub async fn call(
    http: &reqwest::Client,
    url: &str,
    body: String,
) -> Result<serde_json::Value, BoxError> {
    post(http, url, body, "application/json").await
}
