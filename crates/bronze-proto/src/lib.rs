//! Generated gRPC contracts. Prost types stay at the edge: each component
//! converts them into its own validated domain types.

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("bronze.discovery.v1");
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
