//! The request Coder's instance-identity endpoints take: where it goes, and
//! its JSON body.

use reqwest::Url;

use crate::cloud::Identity;

/// The exchange endpoint for this identity's cloud, on the deployment's origin
/// (any path prefix in the URL is dropped, as Coder's Go client does).
pub fn endpoint(base: &Url, identity: &Identity) -> Url {
    base.join(&identity.cloud().coder_path())
        .expect("static path")
}

/// The JSON body posted to Coder: the identity's fields in order, then
/// `agent_name` only when set. It holds the identity: never log it.
pub fn request_body(identity: &Identity, agent_name: Option<&str>) -> Vec<u8> {
    let mut body = serde_json::Map::new();
    for f in identity.fields() {
        body.insert(f.name.into(), f.value.expose().into());
    }
    if let Some(name) = agent_name {
        body.insert("agent_name".into(), name.into());
    }
    serde_json::to_vec(&body).expect("strings always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Cloud, Field};

    fn cloud(id: &str) -> Cloud {
        Cloud::from_auth(id).unwrap()
    }

    #[test]
    fn body_has_agent_name_only_when_set() {
        let id = Identity::new(
            cloud("aws"),
            vec![
                Field::secret("signature", "c2ln\nbmF0dXJl"),
                Field::secret("document", "{\n  \"a\" : 1\n}"),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&request_body(&id, None)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(v["document"], "{\n  \"a\" : 1\n}");
        assert_eq!(v["signature"], "c2ln\nbmF0dXJl");
        let v: serde_json::Value =
            serde_json::from_slice(&request_body(&id, Some("main"))).unwrap();
        assert_eq!(v["agent_name"], "main");
        let gcp = Identity::new(cloud("gcp"), vec![Field::secret("json_web_token", "a.b.c")]);
        let v: serde_json::Value = serde_json::from_slice(&request_body(&gcp, None)).unwrap();
        assert_eq!(v, serde_json::json!({"json_web_token": "a.b.c"}));
        let az = Identity::new(
            cloud("azure"),
            vec![
                Field::secret("signature", "MII"),
                Field::plain("encoding", "pkcs7"),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&request_body(&az, Some("dev"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"signature": "MII", "encoding": "pkcs7", "agent_name": "dev"})
        );
    }

    #[test]
    fn endpoint_drops_any_path_prefix() {
        let base = Url::parse("https://coder.example.com/some/prefix/").unwrap();
        assert_eq!(
            endpoint(&base, &Identity::new(cloud("gcp"), vec![])).as_str(),
            "https://coder.example.com/api/v2/workspaceagents/google-instance-identity"
        );
    }
}
