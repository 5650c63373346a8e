//! `allot.allocator.v1.Allocator`: the offer-broker's view of the allocator.

use crate::engine::{Command, Engine};
use allot_common::convert::resources_from_proto;
use allot_proto::allocator::{allocator_server::Allocator, *};
use tonic::{Request, Response, Status};

/// The allocator's gRPC service: validates each call and hands it to the [`Engine`].
#[derive(Debug, Clone)]
pub struct AllocatorService {
    engine: Engine,
}

impl AllocatorService {
    /// A service in front of `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

fn need(id: &str, what: &str) -> Result<(), Status> {
    if id.is_empty() {
        Err(Status::invalid_argument(format!("{what} is empty")))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl Allocator for AllocatorService {
    type SubscribeStream =
        tokio_stream::wrappers::UnboundedReceiverStream<Result<AllocatorEvent, Status>>;

    async fn subscribe(
        &self,
        _: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.engine.send(Command::Subscribe(tx));
        Ok(Response::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        ))
    }

    async fn activate_framework(
        &self,
        request: Request<ActivateFrameworkRequest>,
    ) -> Result<Response<ActivateFrameworkResponse>, Status> {
        let r = request.into_inner();
        need(&r.framework_id, "framework_id")?;
        self.engine.send(Command::Activate {
            framework: r.framework_id,
            suppressed: r.suppressed,
        });
        Ok(Response::new(ActivateFrameworkResponse {}))
    }

    async fn deactivate_framework(
        &self,
        request: Request<DeactivateFrameworkRequest>,
    ) -> Result<Response<DeactivateFrameworkResponse>, Status> {
        let r = request.into_inner();
        need(&r.framework_id, "framework_id")?;
        self.engine.send(Command::Deactivate(r.framework_id));
        Ok(Response::new(DeactivateFrameworkResponse {}))
    }

    async fn suppress(
        &self,
        request: Request<SuppressRequest>,
    ) -> Result<Response<SuppressResponse>, Status> {
        let r = request.into_inner();
        need(&r.framework_id, "framework_id")?;
        self.engine.send(Command::Suppress(r.framework_id));
        Ok(Response::new(SuppressResponse {}))
    }

    async fn revive(
        &self,
        request: Request<ReviveRequest>,
    ) -> Result<Response<ReviveResponse>, Status> {
        let r = request.into_inner();
        need(&r.framework_id, "framework_id")?;
        self.engine.send(Command::Revive(r.framework_id));
        Ok(Response::new(ReviveResponse {}))
    }

    async fn recover_offers(
        &self,
        request: Request<RecoverOffersRequest>,
    ) -> Result<Response<RecoverOffersResponse>, Status> {
        let r = request.into_inner();
        if !(r.refuse_seconds.is_finite() && r.refuse_seconds >= 0.0) {
            return Err(Status::invalid_argument(format!(
                "refuse_seconds must be a finite number >= 0, got {}",
                r.refuse_seconds
            )));
        }
        let mut launched = Vec::with_capacity(r.launched.len());
        for t in r.launched {
            resources_from_proto(&t.resources)
                .map_err(|e| Status::invalid_argument(format!("task {}: {e}", t.task_id)))?;
            launched.push((
                t.framework_id,
                t.task_id,
                t.agent_id,
                crate::engine::piece_of(&t.resources),
            ));
        }
        self.engine.send(Command::Recover {
            offer_ids: r.offer_ids,
            refuse_seconds: r.refuse_seconds,
            launched,
        });
        Ok(Response::new(RecoverOffersResponse {}))
    }
}
