//! One-step linking: `tern deployment link --to <url-or-profile>` and `tern group init`.
//!
//! Two deployments exchange messages through two channels, one each way. Each channel is
//! made by its sender (`POST /v1/deployments` adds the peer and answers the genesis of our
//! channel to it) and registered by its receiver (`POST /v1/deployments/{id}/channel`). By
//! hand that is three calls per pair on two daemons, with geneses copied between them,
//! N·(N−1)/2 times for a group. Here the CLI talks to both daemons of a pair:
//!
//! ```text
//!   A: GET /v1/status, B: GET /v1/status         (ids, regions, clouds)
//!   A: POST /v1/deployments {id: B}              → genesis A→B
//!   B: POST /v1/deployments {id: A, genesis A→B} → genesis B→A   (A→B registered on B)
//!   A: POST /v1/deployments/B/channel  genesis B→A
//! ```
//!
//! A pair that already knows each other both ways is left alone ("already linked"), so
//! `group init` can be run again after adding a member. A pair linked in part (a link
//! cut short, or a peer added by hand) is completed by the same steps: each daemon keeps
//! the geneses it made and registered, so adding a known peer again answers the same
//! genesis and registering the same genesis again is a no-op (another genesis under a
//! known id is refused, naming both). Each daemon needs a `[[peers]]` entry for the other (where
//! its replication bucket is) and the group's key (`keys.join`): those are configuration,
//! made before linking.

use serde::Serialize;
use tern_api as api;

use crate::client::{self, Client, ClientError};
use crate::profile;

/// A daemon to link: an `http(s)://` URL (with `token`), or a profile's name (its URL and
/// token, `token` when it has none).
pub fn endpoint(spec: &str, token: Option<&str>) -> Result<Client, ClientError> {
    if spec.contains("://") {
        return Ok(Client::new(spec, token.map(str::to_string)));
    }
    let p = profile::load(profile::default_path().as_deref(), Some(spec))
        .map_err(ClientError::Input)?;
    let url = p.url.ok_or_else(|| {
        ClientError::Input(format!(
            "{spec:?} is neither a URL (http://…, https://…) nor a profile with a url"
        ))
    })?;
    Ok(Client::new(&url, p.token.or(token.map(str::to_string))))
}

/// What became of one pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// One deployment.
    pub a: String,
    /// The other.
    pub b: String,
    /// `linked` (just now) or `already_linked`.
    pub state: &'static str,
}

/// Links the deployments behind `a` and `b` both ways (see the module docs).
pub async fn link(a: &Client, b: &Client) -> Result<Link, ClientError> {
    let sa: api::Status = a.get_as("/v1/status").await.map_err(|e| at(a, e))?;
    let sb: api::Status = b.get_as("/v1/status").await.map_err(|e| at(b, e))?;
    if sa.deployment == sb.deployment {
        return Err(ClientError::Input(format!(
            "{} and {} are the same deployment {}",
            a.base(),
            b.base(),
            sa.deployment
        )));
    }
    // Linked: each side has the other in its group with a channel each way.
    let linked = |l: &api::DeploymentList, id: &str| {
        l.deployments
            .iter()
            .any(|d| d.id == id && d.files_sent.is_some() && d.files_received.is_some())
    };
    let la: api::DeploymentList = a.get_as("/v1/deployments").await.map_err(|e| at(a, e))?;
    let lb: api::DeploymentList = b.get_as("/v1/deployments").await.map_err(|e| at(b, e))?;
    let (ida, idb) = (sa.deployment.clone(), sb.deployment.clone());
    if linked(&la, &idb) && linked(&lb, &ida) {
        return Ok(Link {
            a: ida,
            b: idb,
            state: "already_linked",
        });
    }
    // Not linked, or linked in part (a link cut short): every step below is a no-op
    // where it was done before (the daemons answer the genesis they made and accept the
    // same one again), so running them all completes what is missing.
    let no_peer = |on: &str, peer: &str| {
        ClientError::Input(format!(
            "{on} has no [[peers]] entry for {peer} (its replication bucket): add one to \
             {on}'s configuration and restart it, then link again"
        ))
    };
    let there: api::DeploymentCreated = a
        .post_as(
            "/v1/deployments",
            &api::CreateDeployment {
                id: idb.clone(),
                region: sb.region,
                cloud: sb.cloud,
                replication_bucket_url: String::new(),
                genesis: None,
            },
        )
        .await
        .map_err(|e| at(a, e))?;
    let genesis_ab = there.genesis.ok_or_else(|| no_peer(&ida, &idb))?;
    let back: api::DeploymentCreated = b
        .post_as(
            "/v1/deployments",
            &api::CreateDeployment {
                id: ida.clone(),
                region: sa.region,
                cloud: sa.cloud,
                replication_bucket_url: String::new(),
                genesis: Some(genesis_ab),
            },
        )
        .await
        .map_err(|e| at(b, e))?;
    let genesis_ba = back.genesis.ok_or_else(|| no_peer(&idb, &ida))?;
    let _: api::ChannelRegistered = a
        .post_as(
            &format!("/v1/deployments/{}/channel", client::seg(&idb)?),
            &genesis_ba,
        )
        .await
        .map_err(|e| at(a, e))?;
    Ok(Link {
        a: ida,
        b: idb,
        state: "linked",
    })
}

/// `e`, an answer of the daemon behind `c`, naming that daemon (a link talks to two); a
/// refused token says which token each side takes.
fn at(c: &Client, e: ClientError) -> ClientError {
    match e {
        ClientError::Api {
            status,
            kind,
            message,
            redirect,
            body,
        } => {
            let hint = if matches!(status, 401 | 403) {
                " (linking needs each daemon's operator token: --token for --url, \
                 --to-token or the profile's token for --to)"
            } else {
                ""
            };
            ClientError::Api {
                message: format!("the daemon at {}: {message}{hint}", c.base()),
                status,
                kind,
                redirect,
                body,
            }
        }
        e => e,
    }
}

/// Links every pair of `members`, in order; stops at the first failure (the pairs
/// before it stay linked: run it again once fixed).
pub async fn group(
    members: &[Client],
    mut progress: impl FnMut(&Link),
) -> Result<Vec<Link>, ClientError> {
    let mut out = Vec::new();
    for (i, a) in members.iter().enumerate() {
        for b in &members[i + 1..] {
            let l = link(a, b).await?;
            progress(&l);
            out.push(l);
        }
    }
    Ok(out)
}
