//! S3 client construction from a policy's `s3:` block, with the standard AWS credential chain, and
//! [`S3Store`], the S3 backend of [`ObjectStore`](super::ObjectStore): streaming multipart uploads
//! (bounded part size and parallelism), paginated ListObjectsV2, batch deletes, and S3 Object Lock:
//! every object written with retention, the bucket checked before a backup, versions deleted.

use aws_config::{BehaviorVersion, Region, meta::region::RegionProviderChain};
use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ObjectLockEnabled, ObjectLockMode,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::policy::ObjectLock;

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

/// Default multipart part size (S3's minimum is 5 MiB for every part but the last).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Default number of parts uploaded at once; memory used by an upload is at most
/// `part_size * (parallelism + 1)`.
pub const DEFAULT_PARALLELISM: usize = 4;
/// S3's smallest allowed part (except the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// DeleteObjects takes at most this many keys per request.
const DELETE_BATCH: usize = 1000;

/// The S3 backend. Keys are used as given (the storage prefix is applied by the key layout).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    part_size: usize,
    parallelism: usize,
    encryption: Option<aws_sdk_s3::types::ServerSideEncryption>,
    kms_key_id: Option<String>,
    object_lock: Option<ObjectLock>,
}

impl S3Store {
    /// A store writing to `bucket` through `client`, with default part size and parallelism.
    pub fn new(client: aws_sdk_s3::Client, bucket: &str) -> S3Store {
        S3Store {
            client,
            bucket: bucket.to_string(),
            part_size: DEFAULT_PART_SIZE,
            parallelism: DEFAULT_PARALLELISM,
            encryption: None,
            kms_key_id: None,
            object_lock: None,
        }
    }

    /// Write every object with Object Lock retention (`mode`, until now + `retainDays`), and delete
    /// object versions (a versioned bucket's plain delete only hides an object behind a marker).
    pub fn with_object_lock(mut self, lock: Option<ObjectLock>) -> S3Store {
        self.object_lock = lock;
        self
    }

    /// The retention a new object gets now.
    fn retention(&self) -> (Option<ObjectLockMode>, Option<aws_sdk_s3::primitives::DateTime>) {
        match self.object_lock {
            None => (None, None),
            Some(lock) => {
                let until = chrono::Utc::now() + chrono::Duration::days(i64::from(lock.retain_days));
                (
                    Some(ObjectLockMode::from(lock.mode.as_str())),
                    Some(aws_sdk_s3::primitives::DateTime::from_secs(until.timestamp())),
                )
            }
        }
    }

    /// Delete every version (and delete marker) of `key`.
    async fn delete_versions(&self, key: &str) -> super::Result<()> {
        let mut objects = Vec::new();
        let mut marker: Option<(Option<String>, Option<String>)> = None;
        loop {
            let (key_marker, version_marker) = marker.take().unwrap_or_default();
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(key)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await
                .map_err(|e| self.error("ListObjectVersions", key, e))?;
            let versions = page
                .versions()
                .iter()
                .filter(|v| v.key() == Some(key))
                .map(|v| v.version_id());
            let markers = page
                .delete_markers()
                .iter()
                .filter(|m| m.key() == Some(key))
                .map(|m| m.version_id());
            for version in versions.chain(markers) {
                objects.push(
                    ObjectIdentifier::builder()
                        .key(key)
                        .set_version_id(version.map(str::to_string))
                        .build()
                        .map_err(|e| self.error("DeleteObjects", key, e))?,
                );
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            marker = Some((
                page.next_key_marker().map(str::to_string),
                page.next_version_id_marker().map(str::to_string),
            ));
        }
        self.delete_batch(key, objects).await
    }

    async fn delete_batch(&self, first: &str, objects: Vec<ObjectIdentifier>) -> super::Result<()> {
        for batch in objects.chunks(DELETE_BATCH) {
            let delete = Delete::builder()
                .set_objects(Some(batch.to_vec()))
                .quiet(true)
                .build()
                .map_err(|e| self.error("DeleteObjects", first, e))?;
            let output = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("DeleteObjects", first, e))?;
            if let Some(failed) = output.errors().first() {
                return Err(super::Error::Other(format!(
                    "S3 DeleteObjects s3://{}/{}: {} ({} of {} keys failed)",
                    self.bucket,
                    failed.key().unwrap_or_default(),
                    failed.message().unwrap_or_default(),
                    output.errors().len(),
                    batch.len()
                )));
            }
        }
        Ok(())
    }

    /// Bound multipart uploads: parts of `part_size` bytes (at least [`MIN_PART_SIZE`]), at most
    /// `parallelism` (at least 1) in flight.
    pub fn with_upload_limits(mut self, part_size: usize, parallelism: usize) -> S3Store {
        self.part_size = part_size.max(MIN_PART_SIZE);
        self.parallelism = parallelism.max(1);
        self
    }

    /// Ask for server-side encryption (`AES256` or `aws:kms`, with an optional KMS key id).
    pub fn with_encryption(mut self, algorithm: Option<String>, kms_key_id: Option<String>) -> S3Store {
        self.encryption = algorithm.map(|a| aws_sdk_s3::types::ServerSideEncryption::from(a.as_str()));
        self.kms_key_id = kms_key_id;
        self
    }

    fn error<E>(&self, operation: &'static str, key: &str, source: E) -> super::Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        super::Error::S3 {
            operation,
            bucket: self.bucket.clone(),
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    async fn put_single(&self, key: &str, data: Vec<u8>) -> super::Result<()> {
        let (mode, until) = self.retention();
        self.client
            .put_object()
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until)
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .set_server_side_encryption(self.encryption.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, e))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: Vec<u8>,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> super::Result<()> {
        let (mode, until) = self.retention();
        let created = self
            .client
            .create_multipart_upload()
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until)
            .bucket(&self.bucket)
            .key(key)
            .set_server_side_encryption(self.encryption.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = self.upload_parts(key, &upload_id, first, reader).await;
        let parts = match result {
            Ok(parts) => parts,
            Err(error) => {
                // Best effort: a dangling upload holds storage until a lifecycle rule removes it.
                let abort = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                if let Err(abort) = abort {
                    tracing::warn!(key, error = %DisplayErrorContext(&abort), "aborting multipart upload failed");
                }
                return Err(error);
            }
        };
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| self.error("CompleteMultipartUpload", key, e))?;
        Ok(())
    }

    /// Upload parts as they are read, at most `parallelism` at once; returns them in order.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Vec<u8>,
        reader: &mut (dyn AsyncRead + Send + Unpin),
    ) -> super::Result<Vec<CompletedPart>> {
        let mut in_flight = tokio::task::JoinSet::new();
        let mut done = Vec::new();
        let mut next = Some(first);
        let mut number = 0;
        while let Some(data) = next.take() {
            if in_flight.len() >= self.parallelism {
                done.push(join_part(&mut in_flight).await?);
            }
            number += 1;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(data));
            let store = self.clone();
            let part_key = key.to_string();
            in_flight.spawn(async move {
                let output = request
                    .send()
                    .await
                    .map_err(|e| store.error("UploadPart", &part_key, e))?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(output.e_tag().map(str::to_string))
                    .build())
            });
            let data = read_full(reader, self.part_size)
                .await
                .map_err(|source| super::Error::Body {
                    key: key.to_string(),
                    source,
                })?;
            if !data.is_empty() {
                next = Some(data);
            }
        }
        while !in_flight.is_empty() {
            done.push(join_part(&mut in_flight).await?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }
}

type PartResult = super::Result<CompletedPart>;

async fn join_part(set: &mut tokio::task::JoinSet<PartResult>) -> PartResult {
    match set.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(super::Error::Other(format!("part upload task failed: {join}"))),
        None => Err(super::Error::Other("no part upload in flight".into())),
    }
}

/// Read until `limit` bytes or end of input.
async fn read_full(reader: &mut (dyn AsyncRead + Send + Unpin), limit: usize) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(limit);
    let mut taken = reader.take(limit as u64);
    taken.read_to_end(&mut data).await?;
    Ok(data)
}

#[async_trait::async_trait]
impl super::ObjectStore for S3Store {
    fn location(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    async fn put(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> super::Result<super::Written> {
        super::check_key(key)?;
        let mut reader = super::HashingReader::new(body);
        let first = read_full(&mut reader, self.part_size)
            .await
            .map_err(|source| super::Error::Body {
                key: key.to_string(),
                source,
            })?;
        if first.len() < self.part_size {
            self.put_single(key, first).await?;
        } else {
            self.put_multipart(key, first, &mut reader).await?;
        }
        Ok(reader.finish())
    }

    async fn get(&self, key: &str) -> super::Result<super::ByteReader> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    super::Error::NotFound { key: key.into() }
                } else {
                    self.error("GetObject", key, e)
                }
            })?;
        Ok(Box::pin(output.body.into_async_read()))
    }

    async fn head(&self, key: &str) -> super::Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(output.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(self.error("HeadObject", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> super::Result<Vec<super::ObjectInfo>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("ListObjectsV2", prefix, e))?;
            out.extend(page.contents().iter().map(|o| super::ObjectInfo {
                key: o.key().unwrap_or_default().to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
            }));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> super::Result<()> {
        if self.object_lock.is_some() {
            for key in keys {
                self.delete_versions(key).await?;
            }
            return Ok(());
        }
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error("DeleteObjects", first, e))?;
        self.delete_batch(first, objects).await
    }

    async fn locked_until(&self, key: &str) -> super::Result<Option<chrono::DateTime<chrono::Utc>>> {
        let output = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(None),
            Err(e) => return Err(self.error("HeadObject", key, e)),
        };
        let until = output
            .object_lock_retain_until_date()
            .and_then(|d| chrono::DateTime::from_timestamp(d.secs(), 0));
        Ok(until.filter(|t| *t > chrono::Utc::now()))
    }

    fn locks_objects(&self) -> bool {
        self.object_lock.is_some()
    }

    async fn check_ready(&self) -> super::Result<()> {
        if self.object_lock.is_none() {
            return Ok(());
        }
        let disabled = |reason: String| super::Error::ObjectLockDisabled {
            bucket: self.bucket.clone(),
            reason,
        };
        let output = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| disabled(format!("GetObjectLockConfiguration: {}", DisplayErrorContext(&e))))?;
        let enabled = output
            .object_lock_configuration()
            .and_then(|c| c.object_lock_enabled())
            .is_some_and(|e| *e == ObjectLockEnabled::Enabled);
        if !enabled {
            return Err(disabled("its Object Lock configuration is not Enabled".into()));
        }
        Ok(())
    }
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
