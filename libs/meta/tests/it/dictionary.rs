//! Deployments, accounts, databases, schemas, tables, global ids, sequences.

use tern_meta::{
    AccountDpo, AccountKind, DatabaseRole, DeploymentDpo, Error, MetaStore, SchemaDpo,
};
use tern_storage::layout::{AccountId, DatabaseId, DeploymentId};

use crate::common::*;

on_both_backends!(
    deployments,
    accounts_and_databases,
    schemas_and_tables,
    global_ids_and_sequences
);

fn deployment(id: &str) -> DeploymentDpo {
    DeploymentDpo {
        id: DeploymentId::new(id).unwrap(),
        region: "us-west-2".into(),
        cloud: "aws".into(),
        replication_bucket_url: format!("s3://repl-{id}"),
        credentials_ref: Some(format!("secret/{id}")),
        added_at_ms: 7,
    }
}

fn deployments(store: MetaStore) {
    store
        .write(|tx| {
            tx.add_deployment(&deployment("d2"))?;
            tx.add_deployment(&deployment("d1"))
        })
        .unwrap();
    let err = store
        .write(|tx| tx.add_deployment(&deployment("d1")))
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { what: "deployment", name } if name == "d1"),
        "{err}"
    );
    let err = store
        .write(|tx| tx.update_deployment(&deployment("d9")))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "deployment",
                ..
            }
        ),
        "{err}"
    );

    let mut d1 = deployment("d1");
    d1.region = "eu-west-1".into();
    store.write(|tx| tx.update_deployment(&d1)).unwrap();
    let ids: Vec<String> = store
        .read(|tx| tx.list_deployments())
        .unwrap()
        .into_iter()
        .map(|d| d.id.to_string())
        .collect();
    assert_eq!(ids, ["d1", "d2"]);
    let got = store
        .read(|tx| tx.get_deployment(&DeploymentId::new("d1").unwrap()))
        .unwrap();
    assert_eq!(got, Some(d1));
    assert!(
        store
            .write(|tx| tx.remove_deployment(&DeploymentId::new("d2").unwrap()))
            .unwrap()
    );
    assert!(
        !store
            .write(|tx| tx.remove_deployment(&DeploymentId::new("d2").unwrap()))
            .unwrap()
    );
    assert_eq!(store.read(|tx| tx.list_deployments()).unwrap().len(), 1);
}

fn accounts_and_databases(store: MetaStore) {
    // A database needs its account.
    let err = store
        .write(|tx| tx.create_database(&database("db1", "sales")))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "account",
                ..
            }
        ),
        "{err}"
    );

    let acme = AccountDpo {
        name: account(),
        kind: AccountKind::Global {
            group_id: "g-1".into(),
        },
        created_at_ms: 1,
        global_id: Some("acct-g-1".into()),
    };
    let other = AccountDpo {
        name: AccountId::new("other").unwrap(),
        kind: AccountKind::Local,
        created_at_ms: 2,
        global_id: None,
    };
    store
        .write(|tx| {
            tx.create_account(&acme)?;
            tx.create_account(&other)
        })
        .unwrap();
    let err = store.write(|tx| tx.create_account(&acme)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::AlreadyExists {
                what: "account",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store.read(|tx| tx.list_accounts()).unwrap(),
        [acme.clone(), other.clone()]
    );

    store
        .write(|tx| tx.create_database(&database("db1", "sales")))
        .unwrap();
    // Same id again; same (account, name) under another id.
    let err = store
        .write(|tx| tx.create_database(&database("db1", "other")))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::AlreadyExists {
                what: "database",
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .write(|tx| tx.create_database(&database("db2", "sales")))
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { what: "database", name } if name == "acme/sales"),
        "{err}"
    );
    // The same name in another account is fine.
    let mut elsewhere = database("db3", "sales");
    elsewhere.account = other.name.clone();
    store.write(|tx| tx.create_database(&elsewhere)).unwrap();

    let found = store
        .read(|tx| tx.find_database(&account(), "sales"))
        .unwrap()
        .unwrap();
    assert_eq!(found.id, db_id());

    // Rename frees the old name.
    let mut db1 = found.clone();
    db1.name = "revenue".into();
    store.write(|tx| tx.update_database(&db1)).unwrap();
    assert!(
        store
            .read(|tx| tx.find_database(&account(), "sales"))
            .unwrap()
            .is_none()
    );
    store
        .write(|tx| tx.create_database(&database("db2", "sales")))
        .unwrap();

    // Role changes carry an epoch that only grows.
    db1.role = DatabaseRole::Primary;
    db1.epoch = 3;
    store.write(|tx| tx.update_database(&db1)).unwrap();
    let mut stale = db1.clone();
    stale.role = DatabaseRole::Secondary;
    stale.epoch = 2;
    let err = store.write(|tx| tx.update_database(&stale)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleEpoch {
                current: 3,
                offered: 2,
                ..
            }
        ),
        "{err}"
    );
    let mut moved = db1.clone();
    moved.account = other.name.clone();
    assert!(matches!(
        store.write(|tx| tx.update_database(&moved)),
        Err(Error::Invalid { .. })
    ));

    // Dropping keeps the row, frees the name; undropping needs the name free again.
    store
        .write(|tx| tx.drop_database(&DatabaseId::new("db2").unwrap()))
        .unwrap();
    let db2 = store
        .read(|tx| tx.get_database(&DatabaseId::new("db2").unwrap()))
        .unwrap()
        .unwrap();
    assert!(db2.dropped);
    assert!(
        store
            .read(|tx| tx.find_database(&account(), "sales"))
            .unwrap()
            .is_none()
    );
    store
        .write(|tx| tx.create_database(&database("db4", "sales")))
        .unwrap();
    let mut undrop = db2.clone();
    undrop.dropped = false;
    // (The transaction commits despite the error: the failed update wrote nothing.)
    let err = store
        .write(|tx| Ok(tx.update_database(&undrop)))
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let sales = store
        .read(|tx| tx.find_database(&account(), "sales"))
        .unwrap()
        .unwrap();
    assert_eq!(sales.id.as_str(), "db4");
    let mut rename = sales.clone();
    rename.name = "revenue".into(); // taken by db1
    assert!(
        store
            .write(|tx| Ok(tx.update_database(&rename)))
            .unwrap()
            .is_err()
    );
    assert_eq!(
        store
            .read(|tx| tx.find_database(&account(), "sales"))
            .unwrap()
            .map(|d| d.id),
        Some(sales.id.clone())
    );
    let err = store
        .write(|tx| tx.drop_database(&DatabaseId::new("db2").unwrap()))
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    let ids: Vec<String> = store
        .read(|tx| tx.list_databases(&account()))
        .unwrap()
        .into_iter()
        .map(|d| d.id.to_string())
        .collect();
    assert_eq!(ids, ["db1", "db2", "db4"]);

    // An account with live databases cannot be removed.
    let err = store
        .write(|tx| tx.remove_account(&other.name))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InUse {
                what: "account",
                ..
            }
        ),
        "{err}"
    );
    store
        .write(|tx| tx.drop_database(&DatabaseId::new("db3").unwrap()))
        .unwrap();
    assert!(store.write(|tx| tx.remove_account(&other.name)).unwrap());
    assert!(
        store
            .read(|tx| tx.get_account(&other.name))
            .unwrap()
            .is_none()
    );
}

fn schemas_and_tables(store: MetaStore) {
    let t1 = setup_table(&store, "t1");
    // A table needs its schema; a schema needs a live database.
    let mut t = table("t2", "orders");
    t.schema = "missing".into();
    let err = store.write(|tx| tx.create_table(&t)).unwrap_err();
    assert!(
        matches!(err, Error::NotFound { what: "schema", .. }),
        "{err}"
    );
    let err = store
        .write(|tx| {
            tx.create_schema(&SchemaDpo {
                database: DatabaseId::new("nope").unwrap(),
                name: "s".into(),
                created_at_ms: 0,
            })
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                what: "database",
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .write(|tx| {
            tx.create_schema(&SchemaDpo {
                database: db_id(),
                name: "public".into(),
                created_at_ms: 0,
            })
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { what: "schema", .. }),
        "{err}"
    );
    store
        .write(|tx| {
            tx.create_schema(&SchemaDpo {
                database: db_id(),
                name: "audit".into(),
                created_at_ms: 0,
            })
        })
        .unwrap();
    let names: Vec<String> = store
        .read(|tx| tx.list_schemas(&db_id()))
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["audit", "public"]);

    // Unique names and ids; new tables start at version 0 with a version-0 row.
    let err = store
        .write(|tx| tx.create_table(&table("t2", "t1")))
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { what: "table", name } if name == "db1/public/t1"),
        "{err}"
    );
    let err = store
        .write(|tx| tx.create_table(&table("t1", "fresh")))
        .unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { what: "table", .. }),
        "{err}"
    );
    let mut at5 = table("t5", "t5");
    at5.current_version = 5;
    assert!(matches!(
        store.write(|tx| tx.create_table(&at5)),
        Err(Error::Invalid { .. })
    ));
    let v0 = store
        .read(|tx| tx.get_table_version(&t1, 0))
        .unwrap()
        .unwrap();
    assert_eq!(
        (v0.version, v0.columns, v0.ep_files.len()),
        (0, columns(), 0)
    );

    let mut t2 = table("t2", "orders");
    t2.schema = "audit".into();
    store.write(|tx| tx.create_table(&t2)).unwrap();
    let listed: Vec<String> = store
        .read(|tx| tx.list_tables(&db_id()))
        .unwrap()
        .into_iter()
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    assert_eq!(listed, ["audit.orders", "public.t1"]);

    // Rename / move schema through update_table; not the version or the columns.
    t2.schema = "public".into();
    t2.name = "orders2".into();
    t2.retention_ms = Some(60_000);
    store.write(|tx| tx.update_table(&t2)).unwrap();
    assert!(
        store
            .read(|tx| tx.find_table(&db_id(), "audit", "orders"))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .read(|tx| tx.find_table(&db_id(), "public", "orders2"))
            .unwrap(),
        Some(t2.clone())
    );
    let mut bad = t2.clone();
    bad.current_version = 3;
    assert!(matches!(
        store.write(|tx| tx.update_table(&bad)),
        Err(Error::Invalid { .. })
    ));
    let mut bad = t2.clone();
    bad.columns.pop();
    assert!(matches!(
        store.write(|tx| tx.update_table(&bad)),
        Err(Error::Invalid { .. })
    ));

    // A schema with live tables cannot be removed; dropping the tables frees it.
    let err = store
        .write(|tx| tx.remove_schema(&db_id(), "public"))
        .unwrap_err();
    assert!(matches!(err, Error::InUse { what: "schema", .. }), "{err}");
    store
        .write(|tx| {
            tx.drop_table(&t1)?;
            tx.drop_table(&t2.id)
        })
        .unwrap();
    assert!(
        store
            .read(|tx| tx.list_tables(&db_id()))
            .unwrap()
            .is_empty()
    );
    assert!(store.read(|tx| tx.get_table(&t1)).unwrap().unwrap().dropped);
    assert!(
        store
            .write(|tx| tx.remove_schema(&db_id(), "public"))
            .unwrap()
    );
    assert!(
        store
            .read(|tx| tx.get_schema(&db_id(), "public"))
            .unwrap()
            .is_none()
    );
}

fn global_ids_and_sequences(store: MetaStore) {
    store
        .write(|tx| {
            tx.set_global_id("database", "g-db-1", "db/db1")?;
            // Idempotent for the same target.
            tx.set_global_id("database", "g-db-1", "db/db1")?;
            tx.set_global_id("account", "g-db-1", "acct/acme")
        })
        .unwrap();
    let err = store
        .write(|tx| tx.set_global_id("database", "g-db-1", "db/db2"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::AlreadyExists {
                what: "global id",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store
            .read(|tx| tx.find_global("database", "g-db-1"))
            .unwrap()
            .as_deref(),
        Some("db/db1")
    );
    assert_eq!(
        store
            .read(|tx| tx.find_global("account", "g-db-1"))
            .unwrap()
            .as_deref(),
        Some("acct/acme")
    );
    assert!(
        store
            .write(|tx| tx.remove_global("database", "g-db-1"))
            .unwrap()
    );
    assert!(
        !store
            .write(|tx| tx.remove_global("database", "g-db-1"))
            .unwrap()
    );
    assert!(
        store
            .read(|tx| tx.find_global("database", "g-db-1"))
            .unwrap()
            .is_none()
    );

    // Sequences: 1, 2, 3 per name, independent, not consumed by a rolled-back transaction.
    let a: Vec<u64> = (0..3)
        .map(|_| store.write(|tx| tx.next_sequence("ep")).unwrap())
        .collect();
    assert_eq!(a, [1, 2, 3]);
    assert_eq!(store.write(|tx| tx.next_sequence("short")).unwrap(), 1);
    let err = store
        .write(|tx| {
            tx.next_sequence("ep")?;
            Err::<(), _>(Error::Invalid {
                what: "test",
                reason: "abort".into(),
            })
        })
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }));
    assert_eq!(store.read(|tx| tx.current_sequence("ep")).unwrap(), 3);
    assert_eq!(
        store
            .write(|tx| Ok((tx.next_sequence("ep")?, tx.next_sequence("ep")?)))
            .unwrap(),
        (4, 5)
    );
}
