//! The standard gRPC health service (`grpc.health.v1`) every Bronze gRPC
//! port serves beside its API, for `grpc_health_probe`, load balancers and
//! bronze-gateway's `grpc` active checks: the server as a whole is SERVING
//! until its drain starts.

use std::net::SocketAddr;

pub use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// The service to add to a tonic server, and its reporter.
pub fn health() -> (HealthReporter, HealthServer<impl Health>) {
    tonic_health::server::health_reporter()
}

/// The drain has started: the server as a whole is NOT_SERVING from now.
pub async fn draining(reporter: &HealthReporter) {
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
}

/// Asks the health service at `addr` whether `service` (`""`: the server
/// as a whole) is SERVING.
pub async fn serving(addr: SocketAddr, service: &str) -> Result<bool, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(answer.into_inner().status()
        == tonic_health::pb::health_check_response::ServingStatus::Serving)
}
