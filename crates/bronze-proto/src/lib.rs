//! Generated gRPC contracts. Prost types stay at the edge: each component
//! converts them into its own validated domain types. Also the one client
//! loop that reads a discovery Watch (`discovery::Watch`), which the
//! scheduler and the agent share.

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("bronze.discovery.v1");
    }

    /// One change a discovery Watch brings, whole: a snapshot's chunks
    /// are gathered into one `Snapshot`.
    #[derive(Debug, Clone)]
    pub enum Change {
        /// Every instance, replacing what was known.
        Snapshot(Vec<v1::Instance>),
        Upsert(v1::Instance),
        Removed(v1::InstanceRef),
    }

    /// A discovery Watch (from a snapshot) as whole changes.
    pub struct Watch {
        stream: tonic::Streaming<v1::WatchEvent>,
        snapshot: Vec<v1::Instance>,
    }

    impl Watch {
        /// Opens the Watch of discovery's gRPC API at `url`; the error
        /// says why it could not, for a retry loop to log.
        pub async fn open(url: &str) -> Result<Self, String> {
            let mut client = v1::discovery_client::DiscoveryClient::connect(url.to_string())
                .await
                .map_err(|e| e.to_string())?;
            let stream = client
                .watch(v1::WatchRequest::default())
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            Ok(Self {
                stream,
                snapshot: Vec::new(),
            })
        }

        /// The next change; the error says why the stream ended.
        pub async fn next(&mut self) -> Result<Change, String> {
            loop {
                let ev = match self.stream.message().await {
                    Ok(Some(ev)) => ev,
                    Ok(None) => return Err("closed by discovery".into()),
                    Err(e) => return Err(e.message().to_string()),
                };
                match ev.event {
                    Some(v1::watch_event::Event::Snapshot(chunk)) => {
                        self.snapshot.extend(chunk.instances);
                        if chunk.last {
                            return Ok(Change::Snapshot(std::mem::take(&mut self.snapshot)));
                        }
                    }
                    Some(v1::watch_event::Event::Upsert(i)) => return Ok(Change::Upsert(i)),
                    Some(v1::watch_event::Event::Removed(r)) => return Ok(Change::Removed(r)),
                    Some(v1::watch_event::Event::Resumed(_)) | None => {}
                }
            }
        }
    }
}

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("bronze.registry.v1");
    }
}

pub mod scheduler {
    // Generated: oneofs of messages of different sizes.
    #[allow(clippy::large_enum_variant)]
    pub mod v1 {
        tonic::include_proto!("bronze.scheduler.v1");
    }
}
