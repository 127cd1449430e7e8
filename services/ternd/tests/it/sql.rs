//! `POST /v1/sql` answers in the formats it offers.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use ternd::daemon::Daemon;

use crate::harness::*;

/// An Arrow IPC stream: the schema, the rows, the end-of-stream marker; read back by a
/// stock Arrow reader with the same rows as the JSON answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_answers_as_an_arrow_ipc_stream() {
    let dir = tempfile::tempdir().expect("dir");
    let d = Daemon::open(config(&dir.path().join("d1")))
        .await
        .expect("open");
    let s = serve(Arc::clone(&d)).await;
    for (path, body) in [
        ("/v1/accounts", r#"{"name":"acme"}"#),
        ("/v1/accounts/acme/databases", r#"{"name":"sales"}"#),
    ] {
        let (status, v) = call(s.addr, "POST", path, body).await;
        assert_eq!(status, 201, "{path}: {v}");
    }
    let sql = |q: &str, format: &str| {
        serde_json::json!({"account": "acme", "database": "sales", "sql": q, "format": format})
            .to_string()
    };
    for q in [
        "CREATE TABLE t (id BIGINT NOT NULL, name VARCHAR)",
        "INSERT INTO t VALUES (1, 'a'), (2, NULL), (3, 'c')",
        "INSERT INTO t VALUES (4, 'd')",
    ] {
        let (status, _, body) = call_bytes(s.addr, "POST", "/v1/sql", &sql(q, "ndjson")).await;
        assert_eq!(status, 200, "{q}: {}", String::from_utf8_lossy(&body));
    }
    let (status, head, body) = call_bytes(
        s.addr,
        "POST",
        "/v1/sql",
        &sql("SELECT id, name FROM t ORDER BY id", "arrow"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        head.contains("content-type: application/vnd.apache.arrow.stream"),
        "{head}"
    );
    assert!(
        body.ends_with(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
        "a complete stream ends with the end-of-stream marker"
    );
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .expect("an Arrow IPC stream");
    let names: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "name"]);
    let (mut ids, mut texts) = (Vec::new(), Vec::new());
    for b in reader {
        let b = b.expect("a record batch");
        let id = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64");
        let name = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        for i in 0..b.num_rows() {
            ids.push(id.value(i));
            texts.push((!name.is_null(i)).then(|| name.value(i).to_string()));
        }
    }
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(
        texts,
        [Some("a".into()), None, Some("c".into()), Some("d".into())]
    );
    // An unknown format is named.
    let (status, _, body) = call_bytes(s.addr, "POST", "/v1/sql", &sql("SELECT 1", "xml")).await;
    assert_eq!(status, 400);
    let err = String::from_utf8_lossy(&body);
    assert!(err.contains("xml") && err.contains("arrow"), "{err}");
    s.task.abort();
}
