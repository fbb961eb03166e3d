-- wrk script: each request carries the next of 1,000 distinct callers' tokens (file in $TOKENS),
-- so a proxy that caches validated tokens gets no help from seeing one token over and over.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do
  if #line > 0 then tokens[#tokens + 1] = line end
end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
