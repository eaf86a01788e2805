-- Body checks HAProxy cannot express as ACLs, for POST .../adaptive_diffusion/infer (export/SECURITY.md).
-- Sets txn.guard to the reason when the request must be refused; the config turns that into a 400.
-- Limits arrive as variables set by the config: txn.max_depth, txn.max_dim.
--   1. JSON nesting deeper than max_depth (Triton 2.51 segfaults on ~60,000 deep: recursive walk);
--   2. a declared "shape" with a dimension above max_dim (2.51 allocates the declared size first);
--   3. \u escapes of printable ASCII, which could spell a key ("\u0073hape") past check 2.
-- Strings are skipped by their quotes, so a prompt may hold any brackets it likes.

local function check(json, max_depth, max_dim)
  if json:find("\\u00[2-7]") then
    return "JSON escapes of printable ASCII (\\u0020-\\u007f) are not accepted"
  end
  local depth, pos, n = 0, 1, #json
  while pos <= n do
    local s, _, c = json:find('(["%[%]{}])', pos)
    if not s then break end
    if c == '"' then
      -- the end of this string: the next quote not escaped by an odd run of backslashes
      local p = s + 1
      while true do
        local q = json:find('["\\]', p)
        if not q then return "unterminated JSON string" end
        if json:sub(q, q) == "\\" then p = q + 2 else pos = q + 1; break end
      end
    else
      if c == "[" or c == "{" then
        depth = depth + 1
        if depth > max_depth then
          return "JSON nested deeper than " .. max_depth .. " levels"
        end
      else
        depth = depth - 1
      end
      pos = s + 1
    end
  end
  for dims in json:gmatch('"shape"%s*:%s*%[([^%]]*)%]') do
    for token in (dims .. ","):gmatch("([^,]*),") do
      local dim = token:match("^%s*(%d+)%s*$")
      if not dim or tonumber(dim) > max_dim then
        return "shape dimension '" .. token:gsub("%s", "") .. "' outside [0, " .. max_dim .. "]"
      end
    end
  end
  return nil
end

core.register_action("check_infer_body", { "http-req" }, function(txn)
  local body = txn.sf:req_body() or ""
  -- Binary tensor extension: the JSON header is the first Inference-Header-Content-Length bytes.
  local header = txn.sf:req_hdr("Inference-Header-Content-Length")
  if header and header ~= "" then
    local length = tonumber(header)
    if not length or length > #body then
      txn:set_var("txn.guard", "Inference-Header-Content-Length does not fit the body")
      return
    end
    body = body:sub(1, length)
  end
  local reason = check(body, tonumber(txn:get_var("txn.max_depth")), tonumber(txn:get_var("txn.max_dim")))
  if reason then
    txn:set_var("txn.guard", reason)
  end
end, 0)
