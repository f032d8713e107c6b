-- One small JSON event per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"order":17,"customer":"c-42","total":42.5,"items":["a","b","c"]}'
