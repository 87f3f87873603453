//! The S3 sink on moto: large objects go up in parts, puts replace, and the client is
//! configured from the standard `AWS_*` variables (`AWS_ENDPOINT_URL` included).

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use persister::{ObjectSink, S3Sink};

use crate::support::moto_bucket;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn s3_sink_uploads_large_objects_in_parts_and_replaces() -> Result<()> {
    let Some(moto) = testkit::moto::shared("s3_sink_uploads_large_objects_in_parts_and_replaces")
    else {
        return Ok(());
    };
    let bucket = testkit::unique_name("parts");
    let store = moto_bucket(moto, &bucket).await?;
    let sink = S3Sink::new(store.clone()).with_multipart(6 * MIB, 5 * MIB);
    let key = "events/big/2024-05-01:12/shard-1-2.ndjson";
    let body: Vec<u8> = (0..13 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    sink.put(key, Bytes::from(body.clone())).await?;
    let read = sink.get(key).await?.context("object missing")?;
    ensure!(
        read.as_ref() == body.as_slice(),
        "the object reads back as written"
    );
    // S3 gives a multipart object an ETag ending in `-<parts>`.
    let meta = store.head(&Path::parse(key)?).await?;
    let etag = meta.e_tag.unwrap_or_default();
    ensure!(
        etag.trim_matches('"').ends_with("-3"),
        "ETag {etag} of a 13 MiB object in 5 MiB parts"
    );

    sink.put(key, Bytes::from_static(b"small\n")).await?;
    let read = sink.get(key).await?.context("object missing")?;
    ensure!(read.as_ref() == b"small\n", "a put replaces the object");
    ensure!(sink.list("events/big/").await? == vec![key.to_owned()]);
    ensure!(
        sink.list("events/bi").await? == vec![key.to_owned()],
        "prefixes need not end at a /"
    );
    ensure!(sink.get("events/none").await?.is_none());
    Ok(())
}

const CHILD_BUCKET: &str = "FANNER_TEST_FROM_ENV_BUCKET";

#[tokio::test]
async fn s3_sink_from_env_honours_aws_endpoint_url() -> Result<()> {
    let Some(moto) = testkit::moto::shared("s3_sink_from_env_honours_aws_endpoint_url") else {
        return Ok(());
    };
    let bucket = testkit::unique_name("env");
    let sink = S3Sink::new(moto_bucket(moto, &bucket).await?);
    // The environment is process-wide: the client is built in a child process of this test
    // binary, which runs `s3_sink_from_env_child` only.
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "s3::s3_sink_from_env_child", "--nocapture"])
        .env(CHILD_BUCKET, &bucket)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .status()?;
    ensure!(status.success(), "the child failed: {status}");
    let read = sink
        .get("from-env/object")
        .await?
        .context("the child's object is missing")?;
    ensure!(read.as_ref() == b"written through AWS_ENDPOINT_URL");
    Ok(())
}

/// Runs only inside the child process of the test above.
#[tokio::test]
async fn s3_sink_from_env_child() -> Result<()> {
    let Ok(bucket) = std::env::var(CHILD_BUCKET) else {
        return Ok(());
    };
    let sink = S3Sink::from_env(&bucket)?;
    sink.put(
        "from-env/object",
        Bytes::from_static(b"written through AWS_ENDPOINT_URL"),
    )
    .await?;
    Ok(())
}
