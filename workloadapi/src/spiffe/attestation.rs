//! `edgeid.attestation.v1.ModuleAttestation` on the SPIFFE socket: the
//! caller's module by the same mapping and security header as the SPIFFE
//! Workload API, and the same quote as the workload API's `attest` route.

use tonic::{Request, Response, Status};

use super::grpc::status;
use super::proto::attestation::module_attestation_server::ModuleAttestation;
use super::proto::attestation::{PcrValue, QuoteRequest, QuoteResponse};
use super::Spiffe;
use crate::workload::Who;

#[tonic::async_trait]
impl ModuleAttestation for Spiffe {
    async fn quote(
        &self,
        request: Request<QuoteRequest>,
    ) -> Result<Response<QuoteResponse>, Status> {
        let module = self.module(&request)?;
        let caller = request
            .extensions()
            .get::<edgeid_common::Caller>()
            .ok_or_else(|| Status::internal("the connection's caller is unknown"))?;
        let who = Who {
            caller,
            bound: None,
        };
        let req = request.get_ref();
        let q = self
            .workload
            .attest(&who, &module, None, &req.nonce, req.ima_offset)
            .await
            .map_err(status)?;
        let quote = q.quote;
        let pcrs = quote
            .pcrs
            .iter()
            .flat_map(|(bank, values)| {
                values.iter().map(move |(index, value)| PcrValue {
                    bank: bank.clone(),
                    index: *index,
                    value: value.0.clone(),
                })
            })
            .collect();
        Ok(Response::new(QuoteResponse {
            device_id: q.device_id,
            module_id: q.module_id,
            spiffe_id: q.spiffe_id.unwrap_or_default(),
            qualifying_data: q.qualifying_data,
            attest: quote.attest.0,
            signature: quote.signature.0,
            signature_der: quote.signature_der.0,
            pcrs,
            reset_count: quote.clock.reset_count,
            clock: quote.clock.clock,
            ak_public: q.attestation_key.public.0,
            ak_pem: q.attestation_key.pem,
            ak_name: q.attestation_key.name.0,
            ek_public: q.endorsement.endorsement_key.public.0,
            ek_pem: q.endorsement.endorsement_key.pem,
            ek_certificate: q
                .endorsement
                .endorsement_certificate
                .map(|c| c.0)
                .unwrap_or_default(),
            firmware_log_complete: quote.event_logs.firmware.complete,
            firmware_log_error: quote.event_logs.firmware.error.unwrap_or_default(),
            ima_log_offset: quote.event_logs.ima.offset,
            ima_log_complete: quote.event_logs.ima.complete,
            ima_log_error: quote.event_logs.ima.error.unwrap_or_default(),
            firmware_log: quote
                .event_logs
                .firmware
                .data
                .map(|d| d.0)
                .unwrap_or_default(),
            ima_log: quote.event_logs.ima.data.map(|d| d.0).unwrap_or_default(),
        }))
    }
}
