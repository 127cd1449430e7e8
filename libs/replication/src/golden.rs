//! Stored rows and wire payloads of replication, pinned: a change to any of these bytes
//! is a format change (a peer or a metadata store of the previous build must still read
//! it), to be made on purpose with a version bump or a `serde(default)` field.

use std::collections::BTreeMap;

use tern_storage::layout::{AccountId, DatabaseId, DeploymentId, TableId};

use crate::failover::{GroupDpo, Handoff, Rewind};
use crate::jobs::JobRetry;
use crate::model::{PAYLOAD_VERSION, RefreshNeeded, VoteRequest, encode};
use crate::state::{DownstreamDpo, PendingRefresh, ReplicaDpo, Shipping};

fn json<T: serde::Serialize>(v: &T) -> String {
    String::from_utf8(encode(v).unwrap()).unwrap()
}

#[test]
fn stored_rows_are_golden() {
    let d1 = DeploymentId::new("d1").unwrap();
    let mut g = GroupDpo::new("g1", &d1, 3);
    g.handoff = Some(Handoff {
        to: DeploymentId::new("d2").unwrap(),
        since_ms: 10,
        txn: 7,
    });
    g.rewind = Some(Rewind {
        keep: true,
        epoch: 2,
    });
    assert_eq!(
        json(&g),
        r#"{"group":"g1","epoch":3,"primary":"d1","claim":null,"policy":{"block_commits_beyond_rpo":false,"auto_failover":false},"primary_beat":null,"acks":{},"promised":3,"members":[],"since_ms":0,"promised_to":null,"excluded":[],"handoff":{"to":"d2","since_ms":10,"txn":7},"rewind":{"keep":true,"epoch":2}}"#
    );
    let mut r = ReplicaDpo::new(
        DatabaseId::new("db1").unwrap(),
        AccountId::new("a2").unwrap(),
        "g1".into(),
        d1.clone(),
        true,
        PendingRefresh {
            request_id: "rq-d2-1".into(),
            sent: false,
            asked_at_ms: 5,
            reason: "new replica".into(),
        },
    );
    r.upstream_versions = BTreeMap::from([(TableId::new("t1").unwrap(), 4)]);
    assert_eq!(
        json(&r),
        r#"{"database":"db1","account":"a2","group":"g1","upstream":"d1","follow_log":true,"refresh":{"request_id":"rq-d2-1","sent":false,"asked_at_ms":5,"reason":"new replica"},"last_refresh_at_ms":null,"refreshes":0,"applied_txn":0,"applied_commit_at_ms":null,"applied_at_ms":null,"upstream_versions":{"t1":4},"upstream_commit_at_ms":null,"records_applied":0,"bytes_copied":0,"files_copied":0,"last_error":null,"created_at_ms":5,"applied_seq":0,"promoting":false}"#
    );
    let mut down = DownstreamDpo {
        database: DatabaseId::new("db1").unwrap(),
        account: AccountId::new("a1").unwrap(),
        group: "g1".into(),
        peer: DeploymentId::new("d2").unwrap(),
        peer_database: DatabaseId::new("db9").unwrap(),
        subscribed: true,
        customer_key: None,
        cursor: 12,
        records_shipped: 3,
        snapshots: 1,
        bytes_copied: 100,
        shipped_at_ms: Some(9),
        last_error: None,
        shipping: None,
        shipped_seq: None,
        refresh_needed_since_ms: None,
    };
    let before = json(&down);
    assert_eq!(
        before,
        r#"{"database":"db1","account":"a1","group":"g1","peer":"d2","peer_database":"db9","subscribed":true,"customer_key":null,"cursor":12,"records_shipped":3,"snapshots":1,"bytes_copied":100,"shipped_at_ms":9,"last_error":null}"#
    );
    down.shipping = Some(Shipping {
        txn_id: 13,
        message_id: "lg-db1-d1-13".into(),
    });
    assert!(json(&down).ends_with(r#""shipping":{"txn_id":13,"message_id":"lg-db1-d1-13"}}"#));
    // Rows written before `shipping`, `shipped_seq` and `refresh_needed_since_ms` existed
    // still read.
    let old: DownstreamDpo = serde_json::from_str(&before).unwrap();
    assert_eq!(old.shipping, None);
    assert_eq!((old.shipped_seq, old.refresh_needed_since_ms), (None, None));
    down.shipping = None;
    down.shipped_seq = Some(40);
    down.refresh_needed_since_ms = Some(77);
    assert!(
        json(&down)
            .ends_with(r#""last_error":null,"shipped_seq":40,"refresh_needed_since_ms":77}"#)
    );
    let retry = JobRetry {
        next_at_ms: 1_000,
        last_error: Some("boom".into()),
        failed: false,
    };
    assert_eq!(
        json(&retry),
        r#"{"next_at_ms":1000,"last_error":"boom","failed":false}"#
    );
}

#[test]
fn wire_payloads_are_golden() {
    let vote = VoteRequest {
        v: PAYLOAD_VERSION,
        group: "g1".into(),
        epoch: 4,
        seq: 17,
        handoff: true,
        cancel: false,
    };
    assert_eq!(
        json(&vote),
        r#"{"v":1,"group":"g1","epoch":4,"seq":17,"handoff":true}"#
    );
    let back: VoteRequest =
        crate::model::decode(br#"{"v":1,"group":"g1","epoch":4,"seq":17}"#).unwrap();
    assert!(!back.handoff && !back.cancel);
    let notice = RefreshNeeded {
        v: PAYLOAD_VERSION,
        group: "g1".into(),
        cursor: 12,
        pruned_up_to: 40,
    };
    assert_eq!(
        json(&notice),
        r#"{"v":1,"group":"g1","cursor":12,"pruned_up_to":40}"#
    );
}

fn manifest_parts() -> (crate::model::WrappedRepMk, crate::model::TableHead) {
    let repmk = crate::model::WrappedRepMk {
        diversifier: tern_crypto::Diversifier::from_unix_secs(3600),
        wrapped: "ab".into(),
        sealed: None,
    };
    let head = crate::model::TableHead {
        table: TableId::new("t1--d1").unwrap(),
        schema: "public".into(),
        name: "orders".into(),
        columns: Vec::new(),
        version: 5,
        answered_version: 2,
        adds: 1,
        removes: 1,
    };
    (repmk, head)
}

/// An import job stores the manifest and a cursor (format of this build), and a row a
/// previous build stored with the whole response still reads: its sections come out of
/// it (the importer writes them into the sections file and stores the row again).
#[test]
fn import_jobs_are_golden_and_rows_of_the_previous_build_still_read() {
    use crate::model::{SnapshotManifest, SnapshotResponse, TableSnapshot};
    use crate::state::ImportJobDpo;
    use tern_storage::layout::{GlobalFileRef, ResponseId, ShortName};
    let (repmk, head) = manifest_parts();
    let manifest = SnapshotManifest {
        v: PAYLOAD_VERSION,
        request_id: "rq-d2-1".into(),
        response_id: ResponseId::new("rs-d1-4").unwrap(),
        group: "g1".into(),
        lamport: 9,
        repmk: repmk.clone(),
        schemas: vec!["public".into()],
        tables: vec![head],
        sections: 2,
        bytes: 100,
        taken_at_ms: 7,
        epoch: 1,
        seq: 3,
        streamed: false,
    };
    let job = ImportJobDpo {
        peer: DeploymentId::new("d1").unwrap(),
        response: manifest.clone(),
        received_at_ms: 8,
        attempts: 1,
        retry: JobRetry::default(),
        tables_done: 1,
        sections_done: 2,
        batch: None,
        superseded: false,
        legacy_sections: None,
    };
    let stored = json(&job);
    assert_eq!(
        stored,
        r#"{"peer":"d1","response":{"v":1,"request_id":"rq-d2-1","response_id":"rs-d1-4","group":"g1","lamport":9,"repmk":{"diversifier":3600,"wrapped":"ab"},"schemas":["public"],"tables":[{"table":"t1--d1","schema":"public","name":"orders","columns":[],"version":5,"answered_version":2,"adds":1,"removes":1}],"sections":2,"bytes":100,"taken_at_ms":7,"epoch":1,"seq":3},"received_at_ms":8,"attempts":1,"tables_done":1,"sections_done":2}"#
    );
    let back: ImportJobDpo = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, job);

    // The previous build's row: the whole response, every file listed.
    let origin = DeploymentId::new("d1").unwrap();
    let file = tern_meta::MicroPartitionDpo {
        table: TableId::new("t1--d1").unwrap(),
        short: ShortName::new("fdn1").unwrap(),
        global_ref: GlobalFileRef::new(origin.clone(), ShortName::new("fdn1").unwrap()),
        rows: 10,
        bytes: 50,
        stats: Vec::new(),
        added_version: 4,
        removed_version: None,
        path: "x.mp".into(),
        key_ref: String::new(),
    };
    let gone = GlobalFileRef::new(origin, ShortName::new("fdn0").unwrap());
    let whole = SnapshotResponse {
        v: PAYLOAD_VERSION,
        request_id: "rq-d2-1".into(),
        response_id: ResponseId::new("rs-d1-4").unwrap(),
        group: "g1".into(),
        lamport: 9,
        repmk,
        schemas: vec!["public".into()],
        tables: vec![TableSnapshot {
            table: TableId::new("t1--d1").unwrap(),
            schema: "public".into(),
            name: "orders".into(),
            columns: Vec::new(),
            version: 5,
            answered_version: 2,
            add: vec![file.clone()],
            remove: vec![gone.clone()],
        }],
        bytes: 100,
        taken_at_ms: 7,
        epoch: 1,
        seq: 3,
    };
    let old = format!(
        r#"{{"peer":"d1","response":{},"received_at_ms":8,"attempts":1}}"#,
        json(&whole)
    );
    let read: ImportJobDpo = serde_json::from_str(&old).unwrap();
    assert_eq!(
        read.response,
        SnapshotManifest {
            sections: 1,
            ..manifest.clone()
        }
    );
    assert_eq!((read.tables_done, read.sections_done), (0, 0));
    let sections = read
        .legacy_sections
        .clone()
        .expect("the old row's sections");
    assert_eq!(sections.len(), 1);
    assert_eq!(sections[0].add, vec![file]);
    assert_eq!(sections[0].remove, vec![gone]);
    // Stored again, it is a manifest row.
    assert!(!json(&read).contains("fdn1"));

    // A response sent ahead of its files, imported as they land: the batch under way
    // (its reserved volume names) and a superseded mark are in the row; a row without
    // them (the build before) reads as neither.
    let streamed = ImportJobDpo {
        response: SnapshotManifest {
            streamed: true,
            ..manifest.clone()
        },
        batch: Some(crate::state::ImportBatch {
            tables: 1,
            first_name: 40,
        }),
        superseded: true,
        ..job.clone()
    };
    let stored_streamed = json(&streamed);
    assert_eq!(
        stored_streamed,
        r#"{"peer":"d1","response":{"v":1,"request_id":"rq-d2-1","response_id":"rs-d1-4","group":"g1","lamport":9,"repmk":{"diversifier":3600,"wrapped":"ab"},"schemas":["public"],"tables":[{"table":"t1--d1","schema":"public","name":"orders","columns":[],"version":5,"answered_version":2,"adds":1,"removes":1}],"sections":2,"bytes":100,"taken_at_ms":7,"epoch":1,"seq":3,"streamed":true},"received_at_ms":8,"attempts":1,"tables_done":1,"sections_done":2,"batch":{"tables":1,"first_name":40},"superseded":true}"#
    );
    assert_eq!(
        serde_json::from_str::<ImportJobDpo>(&stored_streamed).unwrap(),
        streamed
    );
}

/// A refresh request of a replica that imports files as they land asks for the plan
/// first (`stream`); a request of the build before (no field) asks for the files first.
#[test]
fn refresh_requests_are_golden() {
    use crate::model::RefreshRequest;
    let request = RefreshRequest {
        v: PAYLOAD_VERSION,
        request_id: "rq-d2-1".into(),
        group: "g1".into(),
        account: AccountId::new("a2").unwrap(),
        database: DatabaseId::new("db9").unwrap(),
        subscribe: true,
        tables: Vec::new(),
        customer_key: None,
        stream: true,
    };
    let stored = json(&request);
    assert_eq!(
        stored,
        r#"{"v":1,"request_id":"rq-d2-1","group":"g1","account":"a2","database":"db9","subscribe":true,"tables":[],"stream":true}"#
    );
    let old: RefreshRequest = crate::model::decode(
        br#"{"v":1,"request_id":"rq-d2-1","group":"g1","account":"a2","database":"db9","subscribe":true,"tables":[]}"#,
    )
    .unwrap();
    assert_eq!(
        old,
        RefreshRequest {
            stream: false,
            ..request
        }
    );
}

/// A line of a sections file.
#[test]
fn sections_are_golden() {
    let s = crate::model::TableSection {
        table: TableId::new("t1--d1").unwrap(),
        add: Vec::new(),
        remove: vec![tern_storage::layout::GlobalFileRef::new(
            DeploymentId::new("d1").unwrap(),
            tern_storage::layout::ShortName::new("fdn0").unwrap(),
        )],
    };
    let line = json(&s);
    assert_eq!(
        line,
        r#"{"table":"t1--d1","remove":[{"origin":"d1","short":"fdn0"}]}"#
    );
    assert_eq!(
        serde_json::from_str::<crate::model::TableSection>(&line).unwrap(),
        s
    );
}
