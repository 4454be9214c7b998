//! The gRPC side: service `inference.GRPCInferenceService` of the Open Inference Protocol v2,
//! on the same core (models, batcher, metrics) as REST.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Request, Response, Status};

use crate::tensor::{self, InputTensor, OutputData, TensorData};
use crate::{parse_params, AppState, Param, ServeError};

/// The code generated from `proto/open_inference_grpc.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Self {
        let code = match &e {
            ServeError::BadRequest(_) => Code::InvalidArgument,
            ServeError::NotFound(_) => Code::NotFound,
            ServeError::QueueFull | ServeError::NotReady(_) => Code::Unavailable,
            ServeError::Timeout => Code::DeadlineExceeded,
            ServeError::TooLarge(_) => Code::ResourceExhausted,
            ServeError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

struct Service {
    state: Arc<AppState>,
}

fn to_param(p: &pb::InferParameter) -> Option<Param> {
    Some(match p.parameter_choice.as_ref()? {
        ParameterChoice::BoolParam(b) => Param::Bool(*b),
        ParameterChoice::Int64Param(i) => Param::Int(*i),
        ParameterChoice::StringParam(s) => Param::Str(s.clone()),
        ParameterChoice::DoubleParam(d) => Param::Float(*d),
        ParameterChoice::Uint64Param(u) => Param::Int(i64::try_from(*u).unwrap_or(i64::MAX)),
    })
}

/// Reads a `ModelInferRequest`'s inputs (typed contents or `raw_input_contents`), parameters
/// and requested outputs. No model is needed for this.
pub fn parse_infer_request(
    r: &pb::ModelInferRequest,
) -> Result<(Vec<InputTensor>, crate::InferParams, Vec<&'static str>), ServeError> {
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(ServeError::BadRequest(format!(
            "{} raw_input_contents for {} inputs",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = vec![];
    for (i, inp) in r.inputs.iter().enumerate() {
        let what = format!("input `{}`", inp.name);
        let data = if raw {
            tensor::raw_to_data(&inp.datatype, r.raw_input_contents[i].clone().into(), &what)?
        } else {
            let c = inp.contents.clone().unwrap_or_default();
            match inp.datatype.as_str() {
                "BYTES" => {
                    TensorData::Bytes(c.bytes_contents.into_iter().map(Into::into).collect())
                }
                "FP32" => TensorData::F32(c.fp32_contents),
                other => {
                    return Err(ServeError::BadRequest(format!(
                        "{what}: datatype {other} is not accepted (BYTES images or FP32 tensors)"
                    )))
                }
            }
        };
        inputs.push(InputTensor {
            name: inp.name.clone(),
            datatype: inp.datatype.clone(),
            shape: inp.shape.clone(),
            data,
        });
    }
    let params = parse_params(
        r.parameters
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), to_param(v)?))),
    )?;
    let names: Vec<String> = r.outputs.iter().map(|o| o.name.clone()).collect();
    let wanted = tensor::requested_outputs(&names)?;
    Ok((inputs, params, wanted))
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.ready(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let m = self.state.model(&r.name, Some(&r.version))?;
        Ok(Response::new(pb::ModelReadyResponse {
            ready: m.is_ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "kiln".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["binary_tensor_data".into()],
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let m = self.state.model(&r.name, Some(&r.version))?;
        let meta = crate::rest::metadata_json(m);
        let tensors = |key: &str| {
            meta[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t["name"].as_str().unwrap_or_default().into(),
                    datatype: t["datatype"].as_str().unwrap_or_default().into(),
                    shape: t["shape"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|d| d.as_i64())
                        .collect(),
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name.clone(),
            versions: vec![m.version.clone()],
            platform: "kiln".into(),
            inputs: tensors("inputs"),
            outputs: tensors("outputs"),
        }))
    }

    async fn model_infer(
        &self,
        r: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let started = Instant::now();
        let r = r.into_inner();
        let st = &self.state;
        st.metrics.in_flight.inc();
        let out = self.infer(r, started).await;
        st.metrics.in_flight.dec();
        st.metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        match out {
            Ok((name, resp)) => {
                st.metrics.count(&name, "success");
                Ok(Response::new(resp))
            }
            Err((name, e)) => {
                st.metrics.count(&name, e.reason());
                Err(e.into())
            }
        }
    }
}

impl Service {
    async fn infer(
        &self,
        r: pb::ModelInferRequest,
        started: Instant,
    ) -> Result<(String, pb::ModelInferResponse), (String, ServeError)> {
        let name = r.model_name.clone();
        let fail = |e: ServeError| (name.clone(), e);
        let model = self
            .state
            .model(&r.model_name, Some(&r.model_version))
            .map_err(fail)?;
        if !model.is_ready() {
            return Err(fail(ServeError::NotReady(model.name.clone())));
        }
        let raw = !r.raw_input_contents.is_empty();
        let (inputs, params, wanted) = parse_infer_request(&r).map_err(fail)?;
        let outputs = tensor::infer(
            model,
            inputs,
            &params,
            &wanted,
            started,
            &self.state.metrics,
        )
        .await
        .map_err(fail)?;
        let mut resp = pb::ModelInferResponse {
            model_name: model.name.clone(),
            model_version: model.version.clone(),
            id: r.id.clone(),
            parameters: HashMap::new(),
            outputs: vec![],
            raw_output_contents: vec![],
        };
        for o in outputs {
            // Raw contents when the request used them (as Triton's clients expect), else typed.
            let contents = if raw {
                resp.raw_output_contents.push(o.data.to_raw());
                None
            } else {
                let mut c = pb::InferTensorContents::default();
                match &o.data {
                    OutputData::F32(v) => c.fp32_contents = v.clone(),
                    OutputData::I64(v) => c.int64_contents = v.clone(),
                    OutputData::Bytes(v) => {
                        c.bytes_contents = v.iter().map(|s| s.as_bytes().to_vec()).collect()
                    }
                }
                Some(c)
            };
            resp.outputs
                .push(pb::model_infer_response::InferOutputTensor {
                    name: o.name.into(),
                    datatype: o.data.datatype().into(),
                    shape: o.shape,
                    parameters: HashMap::new(),
                    contents,
                });
        }
        Ok((name, resp))
    }
}

/// Serves gRPC on `listener` until `stop`, then lets the calls in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    stop: impl std::future::Future<Output = ()>,
) {
    let max = state.max_body;
    let svc = GrpcInferenceServiceServer::new(Service { state })
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
    {
        tracing::error!(error = %e, "gRPC server stopped");
    }
}
