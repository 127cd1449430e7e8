//! The API over TLS (`[api.tls]`) with certificates made by `openssl` for the test: the
//! CLI reaches it trusting the test CA (`--ca`), is refused without it, plain HTTP on the
//! TLS port gets no answer, and with `client_ca` (mutual TLS) only a client presenting a
//! certificate of that CA is served. Also the CLI's token commands end to end.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tern_scenarios::binary;
use tern_scenarios::ternd::{Layout, OPERATOR_TOKEN, Ternd, request};

/// Runs `openssl` with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (the test makes its certificates with it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`), a server certificate for 127.0.0.1 and localhost signed by it
/// (`server.pem`, `server.key`), and a client certificate (`client.pem`, `client.key`);
/// also a second, unrelated CA (`other.pem`).
fn make_certificates(dir: &Path) {
    for (name, subject) in [("ca", "/CN=tern test CA"), ("other", "/CN=other CA")] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        ),
        (
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

/// `tern <args> --json` against `url` with the operator token and `extra` flags.
fn tern(url: &str, extra: &[&str], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("tern"))
        .args(extra)
        .args(args)
        .arg("--json")
        .env("TERN_URL", url)
        .env("TERN_TOKEN", OPERATOR_TOKEN)
        .env_remove("TERN_CA")
        .output()
        .expect("run tern");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ok(url: &str, extra: &[&str], args: &[&str]) -> Value {
    let (ok, out, err) = tern(url, extra, args);
    assert!(ok, "tern {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn the_api_over_tls_and_mutual_tls_with_the_cli() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    make_certificates(&certs);
    let c = |f: &str| certs.join(f).display().to_string();

    // TLS, no client certificates.
    let l = Layout::new(dir.path(), "d1");
    let tls = format!(
        "[api.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        c("server.pem"),
        c("server.key")
    );
    let d = Ternd::start(&l.write_config(&l.config(&tls)), &[]);
    let url = format!("https://{}", d.addr);
    let ca = c("ca.pem");
    let v = ok(&url, &["--ca", &ca], &["account", "create", "acme"]);
    assert_eq!(v["account"], "acme", "{v}");
    let v = ok(&url, &["--ca", &ca], &["account", "list"]);
    assert_eq!(v["accounts"][0], "acme", "{v}");
    // Without the CA, or trusting another one: the certificate is not accepted.
    let other = c("other.pem");
    for extra in [vec![], vec!["--ca", other.as_str()]] {
        let (served, _, err) = tern(&url, &extra, &["account", "list"]);
        assert!(!served, "{extra:?}: an untrusted certificate was accepted");
        assert!(!err.is_empty(), "{extra:?}: no reason given");
    }
    // A missing CA file is named.
    let (served, _, err) = tern(&url, &["--ca", "/nonexistent/ca.pem"], &["account", "list"]);
    assert!(!served && err.contains("/nonexistent/ca.pem"), "{err}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let r = request(&d.addr, "GET", "/healthz", None, "text/plain", b"");
    assert_ne!(
        r.status, 200,
        "plain HTTP was served on the TLS port: {}",
        r.body
    );

    // Tokens through the CLI, over TLS: a read-only token reads, is refused writes,
    // and once revoked is refused everything.
    let made = ok(
        &url,
        &["--ca", &ca],
        &[
            "token",
            "create",
            "acme",
            "--read-only",
            "--name",
            "grafana",
        ],
    );
    let (secret, id) = (
        made["token"].as_str().expect("token").to_string(),
        made["id"].as_str().expect("id").to_string(),
    );
    let listed = ok(&url, &["--ca", &ca], &["token", "list", "acme"]);
    assert!(
        listed["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .any(|t| t["id"] == id.as_str() && t["read_only"] == true),
        "{listed}"
    );
    let as_ro = |args: &[&str]| {
        let out = Command::new(binary("tern"))
            .args(["--ca", &ca])
            .args(args)
            .env("TERN_URL", &url)
            .env("TERN_TOKEN", &secret)
            .output()
            .expect("run tern");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert!(as_ro(&["database", "list", "acme"]).0);
    let (written, err) = as_ro(&["database", "create", "acme", "sales"]);
    assert!(!written && err.contains("read-only"), "{err}");
    ok(&url, &["--ca", &ca], &["token", "revoke", "acme", &id]);
    let (read, err) = as_ro(&["database", "list", "acme"]);
    assert!(!read && err.contains("revoked"), "{err}");
    assert!(d.terminate().success());

    // Mutual TLS: the same daemon now requires a client certificate of the test CA.
    let mtls = format!("{tls}client_ca = \"{ca}\"\n");
    let d = Ternd::start(&l.write_config(&l.config(&mtls)), &[]);
    let url = format!("https://{}", d.addr);
    let (ok_without, _, err) = tern(&url, &["--ca", &ca], &["account", "list"]);
    assert!(!ok_without, "served without a client certificate");
    assert!(!err.is_empty());
    let (cert, key) = (c("client.pem"), c("client.key"));
    let v = ok(
        &url,
        &["--ca", &ca, "--client-cert", &cert, "--client-key", &key],
        &["account", "list"],
    );
    assert_eq!(v["accounts"][0], "acme", "{v}");
    // A client certificate alone, without its key, is an input error naming both flags.
    let (ok_half, _, err) = tern(
        &url,
        &["--ca", &ca, "--client-cert", &cert],
        &["account", "list"],
    );
    assert!(!ok_half && err.contains("--client-key"), "{err}");
    assert!(d.terminate().success());
}

#[test]
fn a_bad_certificate_file_stops_the_start_naming_its_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = Layout::new(dir.path(), "d1");
    let bad = dir.path().join("not-a-cert.pem");
    std::fs::write(&bad, "hello").expect("write");
    let config = l.write_config(&l.config(&format!(
        "[api.tls]\ncert = \"{b}\"\nkey = \"{b}\"\n",
        b = bad.display()
    )));
    let out = Command::new(binary("ternd"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run ternd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api.tls.cert"), "{err}");
}

/// `psql` (PostgreSQL 15's client) with connection string `conn` running `sql`:
/// (success, stdout, stderr).
fn psql(conn: &str, sql: &str) -> (bool, String, String) {
    let lib = Path::new("/usr/lib/postgresql/15/bin/psql");
    let bin = if lib.exists() { lib } else { Path::new("psql") };
    let out = Command::new(bin)
        .arg(format!("{conn} user=acme dbname=sales connect_timeout=10"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", OPERATOR_TOKEN)
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn psql_connects_over_tls_when_the_api_has_it_and_plain_connections_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    make_certificates(&certs);
    let c = |f: &str| certs.join(f).display().to_string();
    let l = Layout::new(dir.path(), "d1");
    let tls = format!(
        "[api.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        c("server.pem"),
        c("server.key")
    );
    let config = l.write_config(&l.config(&tls));
    let d = Ternd::start(&config, &[("TERN_SQL__PG_LISTEN", "127.0.0.1:0")]);
    let url = format!("https://{}", d.addr);
    let ca = c("ca.pem");
    ok(&url, &["--ca", &ca], &["account", "create", "acme"]);
    ok(
        &url,
        &["--ca", &ca],
        &["database", "create", "acme", "sales"],
    );
    let addr = std::fs::read_to_string(config.with_extension("pg")).expect("pg address file");
    let port = addr
        .trim()
        .rsplit_once(':')
        .expect("host:port")
        .1
        .to_string();

    // sslmode=require: encrypted, the certificate not checked.
    let require = format!("host=127.0.0.1 port={port} sslmode=require");
    let (done, _, err) = psql(
        &require,
        "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)",
    );
    assert!(done, "{err}");
    let (done, _, err) = psql(&require, "INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    assert!(done, "{err}");
    // verify-full: the server's certificate checked against the test CA and the name.
    let verify = |root: &str| {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={port} sslmode=verify-full sslrootcert={root}"
        )
    };
    let (done, out, err) = psql(&verify(&ca), "SELECT name FROM t ORDER BY id");
    assert!(done, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["a", "b"], "{out}");
    // Another CA: the server's certificate is not trusted.
    let (done, _, err) = psql(&verify(&c("other.pem")), "SELECT 1");
    assert!(!done, "a certificate of an untrusted CA was accepted");
    assert!(err.contains("certificate"), "{err}");
    // A plain connection is refused, with the reason, before any password is sent.
    let (done, _, err) = psql(
        &format!("host=127.0.0.1 port={port} sslmode=disable"),
        "SELECT 1",
    );
    assert!(!done, "a connection without TLS was served");
    assert!(err.contains("TLS connections only"), "{err}");
    assert!(d.terminate().success());
}
