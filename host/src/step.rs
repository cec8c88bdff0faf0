//! One step of a model on one backend: the plan, and the step context that every layer of
//! the step runs on.
//!
//! ```text
//! Step::new(backend, dtype, spec, layout, limits, gpu)      once, at start-up
//! per step:   step.prepare(&metadata)                       plan + one asynchronous upload
//!             for each layer: layer.forward_device(&step, q, k, v, out)   launches only
//! ```
//!
//! [`StepPlan`] is a pure function of the metadata, the layer's shape, the device's
//! properties ([`DeviceProps`]) and the step limits: which kernel serves which rows, grids,
//! split counts and workspace bytes. [`Step`] owns what the layers share: the plan, and on
//! a GPU the device copies of the metadata and the split workspace, sized once for
//! [`StepLimits`] so that their addresses never change and a captured CUDA graph stays valid.

//!
//! The step knows no backend by name: the plan's types are `crate::plan`'s, the device
//! buffers `crate::cuda_plumbing::DeviceMetadata`, and the backend's planner and device
//! properties come through its [`BackendName`].

use crate::backend_name::BackendName;
use crate::cuda::CudaRuntime;
use crate::cuda_plumbing::DeviceMetadata;
use crate::dtype::DType;
use crate::error::{AttnError, Result};
use crate::kv_cache::KvCacheLayout;
use crate::metadata::AttentionMetadata;
use crate::platform::{DeviceProps, Platform};
use crate::spec::AttnSpec;
use std::sync::Arc;

pub use crate::plan::{KernelLaunch, LayerShape, PlanOptions, PlanRows, StepLimits, StepPlan};

/// A CUDA graph of one step's launches ([`Step::capture`]), replayed for later steps whose
/// plans launch the same kernels on the same grids and rows ([`StepPlan::same_launches`]):
/// the step's device buffers keep their addresses, so only their contents (the metadata each
/// `prepare` uploads) change between replays.
pub struct StepGraph {
    graph: cudarc::driver::CudaGraph,
    plan: StepPlan,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGraph").field("plan", &self.plan).finish_non_exhaustive()
    }
}

impl StepGraph {
    /// The plan the graph was captured for.
    pub fn plan(&self) -> &StepPlan {
        &self.plan
    }

    /// Replays the graph on the step's stream for `step`'s current plan (prepared with the
    /// next metadata, with [`PlanOptions::force_splits`] at the captured split count); an
    /// error, with nothing launched, if that plan's launches differ from the captured ones.
    pub fn replay(&self, step: &Step) -> Result<()> {
        let plan = step.plan().ok_or_else(|| AttnError::InvalidConfig("the step was not prepared: call Step::prepare(&metadata) first".into()))?;
        if !plan.same_launches(&self.plan) {
            return Err(AttnError::InvalidConfig(format!(
                "the step's plan ({} tokens, {} splits) launches other kernels, grids or rows than the captured one ({} tokens, {} splits): capture it again",
                plan.num_tokens, plan.num_splits, self.plan.num_tokens, self.plan.num_splits
            )));
        }
        self.graph.launch()?;
        Ok(())
    }
}

/// The per-step state every layer of a step runs on (see the module docs). Created once
/// for a backend, a layer shape, a cache layout and [`StepLimits`]; [`Step::prepare`] once
/// per step.
pub struct Step {
    backend: BackendName,
    dtype: DType,
    shape: LayerShape,
    layout: KvCacheLayout,
    limits: StepLimits,
    props: Option<DeviceProps>,
    /// This step's maps, kept on the host for host backends (the CPU) only.
    meta: Option<AttentionMetadata>,
    plan: Option<StepPlan>,
    device: Option<DeviceMetadata>,
}

impl Step {
    /// A step context for layers of `spec` over caches of `layout`. On a CUDA backend this
    /// allocates the persistent metadata buffers and the workspace (the only allocation of a
    /// step's life) and needs the runtime. The backend's capability row is checked first.
    pub fn new(backend: BackendName, dtype: DType, spec: &AttnSpec, layout: KvCacheLayout, limits: StepLimits, gpu: Option<Arc<CudaRuntime>>) -> Result<Step> {
        limits.validate()?;
        let platform = gpu.as_ref().map_or(Platform::Cpu, |rt| rt.platform());
        backend.caps().check_layer(platform, dtype, spec, &layout)?;
        let shape = LayerShape::of(spec);
        // A device backend: its planner's view of the device, and the step's device buffers.
        let (props, device) = if backend.caps().cpu {
            (None, None)
        } else {
            let rt = gpu.ok_or_else(|| AttnError::NoCuda(format!("backend {backend} needs a CUDA device")))?;
            let props = backend.device_props(&rt, dtype, &layout, &shape)?;
            (Some(props), Some(backend.device_metadata(rt, shape, &limits)?))
        };
        Ok(Step { backend, dtype, shape, layout, limits, props, meta: None, plan: None, device })
    }

    /// Plans this step and, on a GPU, uploads its metadata into the persistent buffers (one
    /// asynchronous copy per map; it waits only for the previous step's upload to leave the
    /// staging memory). A step beyond the limits is an error naming the limit.
    pub fn prepare(&mut self, meta: &AttentionMetadata) -> Result<&StepPlan> {
        self.prepare_with(meta, PlanOptions::default())
    }

    /// [`Step::prepare`] with options (a fixed split count).
    pub fn prepare_with(&mut self, meta: &AttentionMetadata, opts: PlanOptions) -> Result<&StepPlan> {
        // A failed prepare leaves the step unprepared, not holding the previous step's plan
        // over buffers it may have half overwritten.
        self.plan = None;
        if *meta.layout() != self.layout {
            return Err(AttnError::Shape(format!("metadata was built for cache {:?}, this step serves caches of {:?}", meta.layout(), self.layout)));
        }
        self.limits.check(meta)?;
        let plan = self.backend.plan(meta, &self.shape, self.dtype, self.props.as_ref(), &self.limits, &opts)?;
        if let Some(dev) = &mut self.device {
            dev.upload(meta, &plan)?;
        }
        // The CPU backend reads the maps from the host; a GPU step has them on the device
        // and keeps no host copy (no per-step clone of the block table).
        self.meta = if self.device.is_none() { Some(meta.clone()) } else { None };
        Ok(self.plan.insert(plan))
    }

    /// The step's backend.
    pub fn backend(&self) -> BackendName {
        self.backend
    }
    /// The layers' activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The layers' shape.
    pub fn shape(&self) -> &LayerShape {
        &self.shape
    }
    /// The caches' layout.
    pub fn layout(&self) -> &KvCacheLayout {
        &self.layout
    }
    /// The largest step it serves.
    pub fn limits(&self) -> &StepLimits {
        &self.limits
    }
    /// What the planner knows of the device; `None` on the CPU.
    pub fn device_props(&self) -> Option<&DeviceProps> {
        self.props.as_ref()
    }
    /// Captures what `record` launches on the step's CUDA stream (the layers'
    /// `forward_device` calls for this prepared step) into a graph, to replay for later steps
    /// ([`StepGraph::replay`]). The launches are recorded, not run: replay the graph to run
    /// them. Tensors the layers read and write must keep their addresses between replays.
    /// An error for a CPU step, or an unprepared one; if `record` fails, the capture ends and
    /// its error is returned.
    pub fn capture(&self, record: impl FnOnce(&Step) -> Result<()>) -> Result<StepGraph> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let plan = self.plan.clone().ok_or_else(|| AttnError::InvalidConfig("the step was not prepared: call Step::prepare(&metadata) first".into()))?;
        let dev = self.device.as_ref().ok_or_else(|| AttnError::InvalidConfig(format!("backend {} runs on the host: nothing to capture", self.backend)))?;
        // The step's upload was enqueued by `prepare`, before the capture begins: it is not
        // recorded (each replay runs after the `prepare` that wrote its maps).
        let stream = dev.runtime().stream().clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let recorded = record(self);
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = graph?.ok_or_else(|| AttnError::InvalidConfig("the capture recorded no launch".into()))?;
        Ok(StepGraph { graph, plan })
    }

    /// The current step's plan; `None` before the first `prepare`.
    pub fn plan(&self) -> Option<&StepPlan> {
        self.plan.as_ref()
    }
    /// The plan of a prepared step whose backend, dtype, shape and layout are a layer's (the
    /// plan names the layer's kernels); an error naming the difference otherwise.
    pub(crate) fn for_layer(&self, backend: BackendName, dtype: DType, shape: &LayerShape, layout: &KvCacheLayout) -> Result<&StepPlan> {
        if backend != self.backend || dtype != self.dtype || *shape != self.shape || *layout != self.layout {
            return Err(AttnError::InvalidConfig(format!(
                "step prepared for {} {} layers of {:?} over cache {:?}; this layer is {backend} {dtype}, {shape:?}, cache {layout:?}",
                self.backend, self.dtype, self.shape, self.layout
            )));
        }
        self.plan.as_ref().ok_or_else(|| AttnError::InvalidConfig("the step was not prepared: call Step::prepare(&metadata) first".into()))
    }

    /// [`Step::for_layer`] for a CUDA layer on runtime `rt`: the plan and the step's device
    /// buffers, which must live on the layer's device (the same runtime).
    pub(crate) fn for_device_layer(&self, backend: BackendName, dtype: DType, shape: &LayerShape, layout: &KvCacheLayout, rt: &Arc<CudaRuntime>) -> Result<(&StepPlan, &DeviceMetadata)> {
        let plan = self.for_layer(backend, dtype, shape, layout)?;
        let dev = self.device.as_ref().ok_or_else(|| AttnError::InvalidConfig("the step has no device buffers".into()))?;
        if !Arc::ptr_eq(dev.runtime(), rt) {
            return Err(AttnError::InvalidConfig(format!(
                "the step's buffers are on another CUDA runtime ({}) than this layer's ({}): make the step on the layer's device",
                dev.runtime().device_name(),
                rt.device_name()
            )));
        }
        Ok((plan, dev))
    }

    /// The prepared step's maps on the host (kept for host backends only).
    pub(crate) fn host_metadata(&self) -> Result<&AttentionMetadata> {
        self.meta.as_ref().ok_or_else(|| AttnError::InvalidConfig("the step was not prepared for a host backend: call Step::prepare(&metadata) first".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Attention;
    use crate::metadata::{MetadataBuilder, RequestSchedule, SchedulerOutput};

    #[test]
    fn a_failed_prepare_leaves_the_step_unprepared() {
        let spec = AttnSpec::new(4, 2, 16);
        let layout = KvCacheLayout::new(8, 16, 2, 16).unwrap();
        let mut layer: Attention<f32> = Attention::new(BackendName::Cpu, spec.clone(), layout, None).unwrap();
        let mut step = Step::new(BackendName::Cpu, DType::F32, &spec, layout, StepLimits::new(8, 2, 32, 16), None).unwrap();
        let meta = |n: usize| MetadataBuilder::new(layout).build(&SchedulerOutput { requests: vec![RequestSchedule { num_computed_tokens: 0, num_new_tokens: n, block_ids: vec![1] }] }).unwrap();
        step.prepare(&meta(3)).unwrap();
        assert_eq!(step.plan().map(|p| p.num_tokens), Some(3));
        // 12 tokens pass the limit of 8: refused, and the 3-token plan is gone with it.
        let e = step.prepare(&meta(12)).unwrap_err().to_string();
        assert!(e.contains("12"), "{e}");
        assert!(step.plan().is_none());
        let (q, kv) = (vec![0.5f32; 3 * 4 * 16], vec![0.25f32; 3 * 2 * 16]);
        let mut out = vec![f32::NAN; q.len()];
        let e = layer.forward_host(&step, &q, &kv, &kv, &mut out).unwrap_err().to_string();
        assert!(e.contains("not prepared"), "{e}");
        assert!(out.iter().all(|x| x.is_nan()), "nothing written");
    }
}
