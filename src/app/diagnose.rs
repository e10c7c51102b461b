//! The diagnostics: `detect` (which cloud, and every signal looked at) and
//! `identity` (the identity the exchange would post, decoded). Neither
//! contacts Coder.

use super::context::Learned;
use super::metadata::{no_cloud, no_identity, Metadata};
use crate::config::Common;
use crate::inspect;
use crate::outcome::{Blame, Done, Failure, Printable};
use crate::retry::{Attempt, Policy};

pub async fn detect(common: Common, learned: &mut Learned) -> Result<Done, Failure> {
    let md = Metadata::new(&common)?;
    let mut d = md.detect().await;
    if let Some(c) = common.cloud {
        d.notes.push(format!(
            "--auth / CODER_AGENT_AUTH names {} ({}): the exchange uses it and skips detection",
            c.auth_method(),
            c.id()
        ));
    }
    learned.cloud = d.cloud.map(|c| c.id());
    learned.output = Some(Printable {
        json: serde_json::to_value(&d).map_err(anyhow::Error::from)?,
        text: d.render(),
    });
    match d.cloud {
        Some(_) => Ok(Done::Printed),
        None => Err(no_cloud(None)),
    }
}

pub async fn identity(common: Common, raw: bool, learned: &mut Learned) -> Result<Done, Failure> {
    let md = Metadata::new(&common)?;
    let policy = Policy::new(common.timeout);
    let cloud = md.cloud(common.cloud, &policy).await?;
    learned.cloud = Some(cloud.id());
    let fetcher = md.fetcher(cloud)?;
    let identity = policy
        .run(
            &format!("fetching the {cloud} instance identity"),
            &|| Blame::Metadata,
            || async {
                fetcher.fetch().await.map_err(|e| match Attempt::from(e) {
                    Attempt::Stop(Failure::NoIdentity(m)) => Attempt::Stop(no_identity(cloud, &m)),
                    other => other,
                })
            },
        )
        .await?;
    tracing::info!(cloud = cloud.id(), "fetched the instance identity");
    let json = inspect::identity_summary(&identity, raw);
    learned.output = Some(Printable {
        text: inspect::render_text(&json),
        json,
    });
    Ok(Done::Printed)
}
