-- wrk script of scripts/bench_kick.py: the same POST on every connection, and a count of the answers by status.
-- Arguments after `--`: the Host header, the Authorization header ("" for none), the JSON body.

local threads = {}

function setup(thread)
	table.insert(threads, thread)
end

local request_bytes

function init(args)
	local headers = { ["Host"] = args[1]; ["Content-Type"] = "application/json" }
	if args[2] ~= "" then headers["Authorization"] = args[2] end
	request_bytes = wrk.format("POST", nil, headers, args[3])
	statuses = {} -- luacheck: ignore 111 (a global, so that done() can read it from each thread)
end

function request()
	return request_bytes
end

function response(status)
	statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency)
	local counts = {}
	for _, thread in ipairs(threads) do
		for status, n in pairs(thread:get("statuses")) do
			counts[status] = (counts[status] or 0) + n
		end
	end
	local errors = summary.errors
	io.write(("BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d socket_errors=%d"):format(summary.requests,
		summary.duration, latency:percentile(50), latency:percentile(99),
		errors.connect + errors.read + errors.write + errors.timeout))
	for status, n in pairs(counts) do
		io.write((" status_%d=%d"):format(status, n))
	end
	io.write("\n")
end
