-- Argo CD health check for imagecopy.dev/ImageCopy (kstatus conventions, docs/reference.md §3).
-- Install: argocd-cm, key resource.customizations.health.imagecopy.dev_ImageCopy (docs/install.md).
--   spec.suspend                         -> Suspended
--   no status / observedGeneration -1 or
--   older than metadata.generation       -> Progressing (the operator has not seen this spec yet)
--   Stalled=True                         -> Degraded   (needs a spec or credential change)
--   Reconciling=True                     -> Progressing (a copy is running)
--   Ready=True                           -> Healthy
--   Ready=False (not stalled)            -> Progressing (transient failure, being retried)
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Copying is suspended (spec.suspend)"
  return hs
end

local status = obj.status
local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end
if status == nil or status.observedGeneration == nil or status.observedGeneration < 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the ImageCopy"
  return hs
end
if status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status.conditions, "Stalled")
local reconciling = condition(status.conditions, "Reconciling")
local ready = condition(status.conditions, "Ready")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Copying")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end
hs.status = "Progressing"
if ready ~= nil then
  hs.message = "Retrying: " .. describe(ready, "not ready")
else
  hs.message = "Waiting for the Ready condition"
end
return hs
