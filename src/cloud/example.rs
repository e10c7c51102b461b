//! A fourth cloud, for tests only: the proof that a provider is one file plus
//! one registry line. Nothing outside this file knows about it; the tests
//! below put it in a registry beside the real three and run the generic code
//! (auth spellings, endpoints, DMI detection, probe, fetch, Coder body) on it.

use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::{
    join, DmiSignal, Env, FetchFuture, Fetcher, Field, Identity, MetadataClient, Names, ProbeSpec,
    Provider,
};

pub struct Example;

const SIGNALS: &[DmiSignal] = &[DmiSignal {
    file: "sys/class/dmi/id/chassis_asset_tag",
    decides: |v| v == "ExampleCloud",
}];

/// Its names; its Coder endpoint is `{CODER_PATH_PREFIX}example-instance-identity`.
pub const NAMES: Names = Names {
    id: "example",
    display: "Example Cloud",
    auth_method: "example-instance-identity",
    aliases: &["ex"],
};

impl Provider for Example {
    fn names(&self) -> &'static Names {
        &NAMES
    }
    fn dmi_signals(&self) -> &'static [DmiSignal] {
        SIGNALS
    }
    fn endpoint(&self, env: &dyn Env) -> Result<Url, String> {
        let raw = env
            .var("EXAMPLE_METADATA")
            .unwrap_or("http://169.254.169.254".into());
        super::env_url("EXAMPLE_METADATA", &raw, "http://169.254.169.254")
    }
    fn probe(&self) -> ProbeSpec {
        ProbeSpec {
            method: Method::GET,
            path: "/example/v1/",
            header: ("x-example", "1"),
            decisive: |r| r.status == 200,
        }
    }
    fn fetcher(&self, client: MetadataClient, base: Url) -> Box<dyn Fetcher> {
        Box::new(ExampleFetcher { client, base })
    }
    fn summarize(&self, identity: &Identity) -> Value {
        json!({ "cloud": NAMES.id, "token_bytes": identity.get("token").map_or(0, crate::secret::Secret::byte_len) })
    }
}

struct ExampleFetcher {
    client: MetadataClient,
    base: Url,
}

impl Fetcher for ExampleFetcher {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            const WHAT: &str = "Example identity token";
            let req = self
                .client
                .request(Method::GET, join(&self.base, "/example/v1/identity"))
                .header("x-example", "1");
            let resp = self.client.send(WHAT, req).await?;
            match resp.status {
                200 => Ok(Identity::new(
                    super::Cloud(&Example),
                    vec![Field::secret("token", resp.text(WHAT)?)],
                )),
                _ => Err(resp.status_error(WHAT)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::registry::REGISTRY;
    use crate::cloud::test_env::env;
    use crate::cloud::{Cloud, Endpoints};
    use crate::detect::{detect_dmi, DmiSource};
    use std::io::{Read, Write};

    /// The real registry plus the one line a new cloud adds.
    fn registry() -> Vec<Cloud> {
        let mut r = REGISTRY.to_vec();
        r.push(Cloud(&Example));
        r
    }

    #[test]
    fn the_generic_code_serves_a_fourth_cloud() {
        let reg = registry();
        // --auth spellings.
        let c = Cloud::from_auth_in(&reg, "EX").unwrap();
        assert_eq!(
            Cloud::from_auth_in(&reg, "example-instance-identity"),
            Some(c)
        );
        // Endpoints, from its own convention.
        let e = Endpoints::resolve_in(&reg, None, &env(&[("EXAMPLE_METADATA", "http://10.1.1.1")]))
            .unwrap();
        assert_eq!(e.site(c).base.as_str(), "http://10.1.1.1/");
        // DMI detection, after the other clouds' signals.
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("sys/class/dmi/id/chassis_asset_tag");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "ExampleCloud\n").unwrap();
        let (found, signals) = detect_dmi(&DmiSource::new(t.path()), &e);
        assert_eq!(found, Some(c));
        assert_eq!(signals.last().unwrap().decides, Some(c));
        // The Coder request.
        let id = Identity::new(c, vec![Field::secret("token", "t0k")]);
        let body: Value =
            serde_json::from_slice(&crate::coder::request::request_body(&id, Some("main")))
                .unwrap();
        assert_eq!(body, json!({"token": "t0k", "agent_name": "main"}));
        let url = crate::coder::endpoint(&Url::parse("https://coder.example.com/x/").unwrap(), &id);
        assert_eq!(
            url.path(),
            "/api/v2/workspaceagents/example-instance-identity"
        );
    }

    #[tokio::test]
    async fn its_fetch_runs_through_the_shared_metadata_client() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nabcde")
                .unwrap();
            req
        });
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let fetcher = Example.fetcher(MetadataClient::new().unwrap(), base);
        let id = fetcher.fetch().await.unwrap();
        assert_eq!(id.get("token").unwrap().expose(), "abcde");
        let req = server.join().unwrap();
        assert!(
            req.starts_with("GET /example/v1/identity HTTP/1.1"),
            "{req}"
        );
        assert!(req.to_ascii_lowercase().contains("x-example: 1"), "{req}");
    }
}
