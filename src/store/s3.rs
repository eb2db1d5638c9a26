//! S3 client construction from a policy's `s3:` block, with the standard AWS credential chain.

use aws_config::{BehaviorVersion, Region, meta::region::RegionProviderChain};
use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use serde::{Deserialize, Serialize};

/// The region used when neither the settings nor the environment (AWS_REGION, profile, IMDS) name one.
pub const FALLBACK_REGION: &str = "us-east-1";

/// Where backups go in S3: the policy ConfigMap's `s3: {bucket, prefix, region, endpoint, forcePathStyle}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Settings {
    /// The bucket backups are written to; it must already exist.
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `clusters/prod`; `None` writes at the bucket root.
    #[serde(default)]
    pub prefix: Option<String>,
    /// AWS region; `None` uses the environment's region (AWS_REGION, profile, IMDS), else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint URL for S3-compatible stores (MinIO, SeaweedFS, Ceph), e.g. `http://minio:9000`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key`; most S3-compatible
    /// stores need this.
    #[serde(default)]
    pub force_path_style: bool,
}

/// An access key pair given explicitly, e.g. read from a Kubernetes Secret, instead of the credential chain.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// The access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// The secret access key (`AWS_SECRET_ACCESS_KEY`); never printed.
    pub secret_access_key: String,
    /// A session token for temporary credentials (`AWS_SESSION_TOKEN`); never printed.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

/// An S3 client using the default credential chain: environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`),
/// web identity (IRSA), profile, container and instance metadata.
///
/// Credentials are resolved lazily, on the first request, so building the client never fails.
pub async fn client(settings: &S3Settings) -> aws_sdk_s3::Client {
    build(settings, None).await
}

/// An S3 client that signs with the given credentials instead of the default chain.
pub async fn client_with_credentials(
    settings: &S3Settings,
    credentials: &StaticCredentials,
) -> aws_sdk_s3::Client {
    let provider = Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        None,
        "freezeframe-static",
    );
    build(settings, Some(SharedCredentialsProvider::new(provider))).await
}

async fn build(settings: &S3Settings, credentials: Option<SharedCredentialsProvider>) -> aws_sdk_s3::Client {
    let region = RegionProviderChain::first_try(settings.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::from_static(FALLBACK_REGION));
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let shared = loader.load().await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(settings.force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            bucket: "backups".into(),
            prefix: None,
            region: Some("eu-central-1".into()),
            endpoint: Some("http://127.0.0.1:1".into()),
            force_path_style: true,
        }
    }

    fn credentials() -> StaticCredentials {
        StaticCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("session-secret".into()),
        }
    }

    #[test]
    fn given_policy_s3_block_when_parsed_then_camel_case_fields_map_to_settings() {
        let yaml = "bucket: backups\nprefix: clusters/prod\nregion: eu-west-1\n\
                    endpoint: http://minio:9000\nforcePathStyle: true\n";

        let parsed: S3Settings = serde_yaml::from_str(yaml).unwrap();

        assert_eq!(
            parsed,
            S3Settings {
                bucket: "backups".into(),
                prefix: Some("clusters/prod".into()),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://minio:9000".into()),
                force_path_style: true,
            }
        );
    }

    #[test]
    fn given_only_a_bucket_when_parsed_then_optional_fields_default_to_aws() {
        let parsed: S3Settings = serde_yaml::from_str("bucket: backups\n").unwrap();

        assert_eq!(parsed.prefix, None);
        assert_eq!(parsed.region, None);
        assert_eq!(parsed.endpoint, None);
        assert!(!parsed.force_path_style);
    }

    #[test]
    fn given_misspelled_field_when_parsed_then_it_is_rejected_not_ignored() {
        let error =
            serde_yaml::from_str::<S3Settings>("bucket: backups\nforcepathstyle: true\n").unwrap_err();

        assert!(error.to_string().contains("forcepathstyle"), "{error}");
    }

    #[test]
    fn given_settings_when_serialized_then_keys_are_camel_case() {
        let json = serde_json::to_value(settings()).unwrap();

        assert_eq!(json["forcePathStyle"], serde_json::json!(true));
    }

    #[test]
    fn given_static_credentials_when_debug_printed_then_secrets_are_redacted() {
        let printed = format!("{:?}", credentials());

        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(!printed.contains("session-secret"), "{printed}");
    }

    #[tokio::test]
    async fn given_region_in_settings_when_client_built_then_client_uses_it() {
        let client = client_with_credentials(&settings(), &credentials()).await;

        assert_eq!(client.config().region().map(Region::as_ref), Some("eu-central-1"));
    }
}
