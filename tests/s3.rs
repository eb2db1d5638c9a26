//! The S3 client freezeframe builds (`store::s3`) against real SeaweedFS and a recording fake endpoint.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use freezeframe::store::s3;

use crate::harness::webhook::RecordedRequest;
use crate::harness::{self, SeaweedFs, TestEnv, WebhookReceiver};

const WAIT: Duration = Duration::from_secs(10);

/// A megabyte of every byte value, so any mangling (text decoding, truncation) shows.
fn binary_payload() -> Vec<u8> {
    (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect()
}

/// Puts `backups/probe.txt` through `client`, whose endpoint is `endpoint`, and returns the request it sent.
async fn put_probe(
    client: &aws_sdk_s3::Client,
    endpoint: &WebhookReceiver,
) -> anyhow::Result<RecordedRequest> {
    let body = ByteStream::from_static(b"x");
    client
        .put_object()
        .bucket("backups")
        .key("probe.txt")
        .body(body)
        .send()
        .await?;
    Ok(endpoint.wait_for_requests(1, WAIT).await?.remove(0))
}

#[tokio::test]
async fn given_seaweedfs_when_object_put_then_get_returns_same_bytes_and_list_shows_it() -> anyhow::Result<()>
{
    let env = TestEnv::with_s3().await?;
    let store = env.s3();
    let client = s3::client_with_credentials(&store.settings(), &harness::test_credentials()).await;
    let payload = binary_payload();
    let key = "clusters/test/backup-1/archive.tar";

    client
        .put_object()
        .bucket(store.bucket())
        .key(key)
        .body(ByteStream::from(payload.clone()))
        .send()
        .await?;
    let read = client
        .get_object()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await?
        .body
        .collect()
        .await?;
    let listed = client
        .list_objects_v2()
        .bucket(store.bucket())
        .prefix("clusters/test/")
        .send()
        .await?;

    assert!(
        read.into_bytes() == payload,
        "object read back differs from what was written"
    );
    let listed: Vec<(&str, Option<i64>)> = listed
        .contents()
        .iter()
        .map(|o| (o.key().unwrap_or(""), o.size()))
        .collect();
    assert_eq!(listed, vec![(key, Some(payload.len() as i64))]);
    Ok(())
}

#[tokio::test]
async fn given_fresh_seaweedfs_when_bucket_created_then_it_exists_and_is_empty() -> anyhow::Result<()> {
    let seaweed = SeaweedFs::start().await?;
    let bucket = harness::unique_bucket_name();
    let settings = harness::s3_settings(&seaweed.endpoint(), &bucket);
    let client = s3::client_with_credentials(&settings, &harness::test_credentials()).await;

    let before = client.head_bucket().bucket(&bucket).send().await;
    client.create_bucket().bucket(&bucket).send().await?;
    let after = client.head_bucket().bucket(&bucket).send().await;
    let objects = client.list_objects_v2().bucket(&bucket).send().await?;

    assert!(before.is_err(), "bucket {bucket} existed before it was created");
    assert!(after.is_ok(), "bucket {bucket} missing after creation: {after:?}");
    assert_eq!(objects.key_count(), Some(0));
    eprintln!("SeaweedFS startup took {:?}", seaweed.startup());
    Ok(())
}

#[tokio::test]
async fn given_static_credentials_and_endpoint_when_object_put_then_request_is_path_style_and_signed_with_them()
-> anyhow::Result<()> {
    let endpoint = WebhookReceiver::start().await?;
    let settings = harness::s3_settings(endpoint.url(), "backups");
    let client = s3::client_with_credentials(&settings, &harness::test_credentials()).await;

    let request = put_probe(&client, &endpoint).await?;

    assert_eq!(request.method, "PUT");
    assert_eq!(
        request.path, "/backups/probe.txt",
        "bucket must be in the path, not the host"
    );
    let authorization = request.header("authorization").unwrap_or_default();
    assert!(
        authorization.contains("Credential=FREEZEFRAMETESTKEY/") && authorization.contains("/us-east-1/s3/"),
        "{authorization}"
    );
    Ok(())
}

/// The default credential chain reads `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`. Setting them here
/// would race with other tests' threads, so the check runs in a child process started with them.
#[tokio::test]
async fn given_credentials_in_environment_when_default_chain_client_puts_then_request_is_signed_with_them()
-> anyhow::Result<()> {
    const NAME: &str = "s3::given_credentials_in_environment_when_default_chain_client_puts_then_request_is_signed_with_them";
    if !harness::in_child_process() {
        return harness::run_in_child_process(
            NAME,
            &[
                ("AWS_ACCESS_KEY_ID", "FREEZEFRAMEENVKEY"),
                ("AWS_SECRET_ACCESS_KEY", "freezeframe-env-secret"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
            &[
                "AWS_SESSION_TOKEN",
                "AWS_PROFILE",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_ENDPOINT_URL",
                "AWS_REGION",
            ],
        );
    }

    let endpoint = WebhookReceiver::start().await?;
    let client = s3::client(&harness::s3_settings(endpoint.url(), "backups")).await;

    let request = put_probe(&client, &endpoint).await?;

    let authorization = request.header("authorization").unwrap_or_default();
    assert!(
        authorization.contains("Credential=FREEZEFRAMEENVKEY/"),
        "{authorization}"
    );
    Ok(())
}

#[tokio::test]
async fn given_running_seaweedfs_when_dropped_then_process_is_reaped_and_its_sockets_removed()
-> anyhow::Result<()> {
    let seaweed = SeaweedFs::start().await?;
    let pid = libc::pid_t::try_from(seaweed.pid())?;
    let sockets = seaweed.grpc_socket_paths();
    let endpoint = seaweed.endpoint();

    drop(seaweed);

    // SAFETY: signal 0 only checks whether the pid exists; a reaped child no longer does.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "weed (pid {pid}) outlived its SeaweedFs");
    let leftover: Vec<_> = sockets.iter().filter(|socket| socket.exists()).collect();
    assert!(leftover.is_empty(), "{leftover:?}");
    let address = endpoint.trim_start_matches("http://");
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "{endpoint} still accepts connections"
    );
    Ok(())
}
